"""Train a two-head crop classifier; with no arguments, on the built-in demo dataset.

The command lives in cropclf/commands/train.py; `cropclf train` runs the same code. --help lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cropclf.cli import run  # noqa: E402
from cropclf.commands.train import main  # noqa: E402

if __name__ == "__main__":
    run(main)
