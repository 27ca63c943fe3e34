"""Export a run's best model as a self-contained TensorFlow SavedModel (training does this too).

    python scripts/export.py --run runs/demo [--out exported/]
"""

import argparse
from pathlib import Path

from cropclf.cli import quiet_tensorflow


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by scripts/train.py")
    p.add_argument("--out", help="SavedModel folder (default: RUN/saved_model)")
    args = p.parse_args(argv)
    quiet_tensorflow()
    from cropclf.errors import CropclfError

    if not (Path(args.run) / "model.keras").exists():
        raise CropclfError(f"{args.run} holds no model.keras. Received: --run {args.run}")
    from cropclf.serving.export import export_run

    export_run(args.run, args.out)

