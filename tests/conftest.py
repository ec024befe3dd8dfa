import sys
from pathlib import Path

# let a bare `pytest` import the top-level packages without an editable install
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
