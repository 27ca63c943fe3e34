"""Train a two-head crop classifier; with no arguments, on the built-in demo dataset.

    python scripts/train.py                                   # demo data -> runs/demo
    python scripts/train.py --annotations via.csv --images imgs/ --heads name,type --out runs/mine

Running the same command again resumes a killed run from its last completed epoch.

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}' \
        python scripts/train.py --distribute multiworker ...   # the same command on every host (README)
"""

import argparse
import os
from pathlib import Path

from cropclf.cli import add_train_args, config_from_args, quiet_tensorflow


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(p)
    p.add_argument("--out", help="run directory (default: runs/demo, or runs/<annotation file name>)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start over")
    p.add_argument("--no-evaluate", action="store_true", help="skip scoring the test split at the end")
    args = p.parse_args(argv)
    quiet_tensorflow()
    cfg = config_from_args(args)
    if cfg.train.distribute == "multiworker":
        from cropclf import cluster

        cluster.read_tf_config()  # before anything starts: a missing or malformed TF_CONFIG is one line
        if cluster.ENV_CHILD not in os.environ:  # this process supervises; a child does the work
            return cluster.supervise(cluster.restart_in_child(argv), cfg.train.peer_timeout)
    out = args.out or f"runs/{Path(cfg.data.annotations).stem if cfg.data.annotations else 'demo'}"
    from cropclf.data.loading import load_frame

    frame = load_frame(cfg)  # bad annotations fail here, in a second, before TensorFlow starts
    from cropclf.model import check_backbone

    check_backbone(cfg.model, cfg.crop.image_size)  # an unknown trunk or too small an input: before decoding
    from cropclf.training import train

    run_dir = train(cfg, out, overwrite=args.overwrite, frame=frame)
    if run_dir is None:  # a non-chief worker of a cluster: the chief keeps the run, evaluates and exports
        print(f"Worker done; the chief holds the run directory {out}.")
        return 0
    if not args.no_evaluate and not (Path(run_dir) / "evaluation" / "report.json").exists():
        from cropclf.evaluation import evaluate_run

        evaluate_run(run_dir)
    print(f"Run directory: {run_dir}")

