"""Inspect a dataset before training: counts, the split, every problem, and a contact sheet.

The command lives in cropclf/commands/inspect_data.py; `cropclf inspect` runs the same code. --help lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cropclf.cli import run  # noqa: E402
from cropclf.commands.inspect_data import main  # noqa: E402

if __name__ == "__main__":
    run(main)
