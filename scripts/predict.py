"""Classify regions with an exported SavedModel; optionally write the labels back into the VIA file.

The command lives in cropclf/commands/predict.py; `cropclf predict` runs the same code. --help lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cropclf.cli import run  # noqa: E402
from cropclf.commands.predict import main  # noqa: E402

if __name__ == "__main__":
    run(main)
