import sys

try:  # importing torch takes seconds: Ctrl-C then is one line too, as it is later
    from .apps.cli import main
except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
