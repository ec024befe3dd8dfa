"""Download SD weights into the weights cache: `python -m weights.fetch [MODEL_ID] [--variant fp16]`."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .errors import WeightsError
from .hub import COMPONENTS, DEFAULT_MODEL, cache_dir, download


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights.fetch", description=__doc__)
    parser.add_argument("model_id", nargs="?", default=DEFAULT_MODEL, help=f"hub model id (default {DEFAULT_MODEL})")
    parser.add_argument("--variant", help='weights variant, e.g. "fp16" (half the download)')
    parser.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    args = parser.parse_args(argv)
    print(f"fetching {args.model_id} ({', '.join(args.components)}) into {cache_dir()}")
    try:
        folder = download(args.model_id, args.components, args.variant)
    except WeightsError as e:
        parser.exit(1, f"error: {e}\n")
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
