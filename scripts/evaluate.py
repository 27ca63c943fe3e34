"""Score a run on its own test split, or on another annotation file.

The command lives in cropclf/commands/evaluate.py; `cropclf evaluate` runs the same code. --help lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cropclf.cli import run  # noqa: E402
from cropclf.commands.evaluate import main  # noqa: E402

if __name__ == "__main__":
    run(main)
