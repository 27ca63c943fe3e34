"""Score a run on its own test split, or on another annotation file.

Per head: accuracy, balanced accuracy and macro-F1 with 95 % intervals (bootstrap over images),
beside the majority-class and chance baselines; a WARNING line for a head that does not beat them.

    python scripts/evaluate.py --run runs/demo
    python scripts/evaluate.py --run runs/demo --annotations other.csv --images imgs/
"""

import argparse
from pathlib import Path

from cropclf.cli import quiet_tensorflow


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run directory written by scripts/train.py")
    p.add_argument("--annotations", help="score on this annotation file instead of the run's test split")
    p.add_argument("--images", help="folder its image filenames resolve against")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="which split of the run")
    p.add_argument("--out", help="report folder (default: RUN/evaluation)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the images for the "
                   "95 %% intervals (default 1000)")
    args = p.parse_args(argv)
    quiet_tensorflow()
    from cropclf.errors import CropclfError

    if args.resamples < 1:
        raise CropclfError(f"--resamples must be at least 1. Received: {args.resamples}")
    if not (Path(args.run) / "model.keras").exists():
        raise CropclfError(f"{args.run} holds no model.keras: is it a run directory of scripts/train.py? "
                           f"Received: --run {args.run}")
    from cropclf.evaluation import evaluate_run

    evaluate_run(args.run, args.annotations, args.images, args.split, args.out, resamples=args.resamples)

