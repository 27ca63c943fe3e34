"""Export a run's best model as a self-contained TensorFlow SavedModel (training does this too).

The command lives in cropclf/commands/export.py; `cropclf export` runs the same code. --help lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cropclf.cli import run  # noqa: E402
from cropclf.commands.export import main  # noqa: E402

if __name__ == "__main__":
    run(main)
