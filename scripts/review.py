"""Finds labelled regions whose label is probably wrong, by k-fold cross-validation and confident learning.

The command lives in cropclf/commands/review.py; `cropclf review` runs the same code. --help lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cropclf.cli import run  # noqa: E402
from cropclf.commands.review import main  # noqa: E402

if __name__ == "__main__":
    run(main)
