"""Inspect a dataset before training: counts, the split, every problem, and a contact sheet.

    python scripts/inspect_data.py                                     # demo data -> inspect/demo
    python scripts/inspect_data.py --annotations via.json --heads name,type --out inspect/mine

Prints the annotation format, image/region/shape counts, per-head class counts per split (the
split training makes with the same config and seed) and one line per problem, with its image file
and row. Writes OUT/contact_sheet.png (sample crops per class, the annotated box in magenta) and
OUT/report.json. Exits 0 whenever the annotations could be read, problems or not.
"""

import argparse
from pathlib import Path

from cropclf.cli import add_data_args, config_from_args


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON config file, as for training; flags here override it")
    add_data_args(p)
    g = p.add_argument_group("inspection")
    g.add_argument("--heads", help="comma-separated attributes to check (default: name,type)")
    g.add_argument("--seed", type=int, help="split seed, as for training (default: the config's)")
    g.add_argument("--per-class", type=int, default=8, metavar="K",
                   help="crops per class in the sheet")
    g.add_argument("--out", help="output folder (default: inspect/<annotation file stem>, or "
                   "inspect/demo)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config value, e.g. --set crop.min_size=4 (JSON values)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error(f"--per-class must be >= 1. Received: {args.per_class}")
    cfg = config_from_args(args)
    stem = Path(cfg.data.annotations).stem if cfg.data.annotations else "demo"
    out = args.out or f"inspect/{stem}"
    from cropclf.inspection import inspect_dataset

    inspect_dataset(cfg, out, per_class=args.per_class, progress=not args.no_progress)

