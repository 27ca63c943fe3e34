"""Crops/s of the data pipeline against the tutorial generator it replaced, and serving speed.

The command lives in cropclf/commands/benchmark.py; `cropclf benchmark` runs the same code. --help lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cropclf.cli import run  # noqa: E402
from cropclf.commands.benchmark import main  # noqa: E402

if __name__ == "__main__":
    run(main)
