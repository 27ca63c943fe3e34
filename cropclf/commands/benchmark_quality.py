"""How well the default recipe learns: train and score the demo and every real set found, over seeds.

    python scripts/benchmark.py --quality                               # every set found, seeds 0,1,2
    python scripts/benchmark.py --quality --real-sets ../shared/real-sets --seeds 0 --epochs 5 --sets bccd
    make bench-quality ARGS="--epochs 10"

The sets, each skipped with a one-line note where absent:

* ``demo``: the built-in synthetic set, scored on the run's own test split.
* every folder directly under ``--real-sets`` holding ``via_trainval.csv`` and ``via_test.csv``, named after
  the folder: trained on the first (cropclf's own train/validation split of it), scored on the second;
  image filenames resolve against the folder. Its heads are the region attributes of ``via_trainval.csv``
  that take two or more values.
* ``rice``: the rice-leaf polygons (``--rice``, a folder holding ``train/via_region_data.csv``), scored on
  ``val/via_region_data.csv`` (its 16 images are all there) or, without it, on the run's own test split; the
  train export names 98 images of which the folder holds 14: the missing ones are skipped.

Each (set, seed) is ``cropclf train --no-evaluate`` then ``cropclf evaluate`` in a subprocess, exactly the
commands a user runs (same flags, same code), so the figures are the product's. The evaluation's
``report.json`` gives accuracy, macro-F1, their 95 % bootstrap intervals, the majority baseline and the verdict.
One table is printed and written to ``OUT/table.md`` and ``OUT/table.csv``; ``OUT/runs.csv`` holds every
(set, seed, head); ``OUT/runs/SET-sSEED/`` the runs, their logs and reports. A run already scored with the same
flags is reused, so a killed benchmark goes on where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cropclf.errors import CropclfError

TRAIN_FILE, TEST_FILE = "via_trainval.csv", "via_test.csv"  # the convention a real set is found by
RICE_FILE, RICE_TEST = Path("train") / "via_region_data.csv", Path("val") / "via_region_data.csv"


@dataclass
class BenchSet:
    """One set to train and score: ``test`` None means the run's own test split."""

    name: str
    annotations: Path | None  # None: the demo dataset
    images: Path | None
    heads: list[str]
    test: Path | None = None
    test_images: Path | None = None  # the test file's image folder; None: ``images``
    train_flags: list[str] = field(default_factory=list)


def add_quality_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quality (--quality)")
    g.add_argument("--quality", action="store_true", help="train and score the demo and the real sets found "
                                                          "instead of timing the data pipeline")
    g.add_argument("--real-sets", action="append",
                   help=f"folder whose sub-folders holding {TRAIN_FILE} and {TEST_FILE} are real sets; may be "
                        "given more than once (default ../shared/real-sets)")
    g.add_argument("--rice", default="../shared/via-samples/tzelalouzeir_rice_leaf_diseases",
                   help=f"rice-leaf folder holding {RICE_FILE} (scored on its own test split)")
    g.add_argument("--sets", help="comma-separated names of the sets to run (default: every set found)")
    g.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    g.add_argument("--epochs", type=int, help="epoch budget per run (default: the config's)")
    g.add_argument("--image-size", help="crop size passed to train (default: the config's)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config value passed to every train run, e.g. --set augment.hflip=0")
    g.add_argument("--out", default="runs/bench-quality", help="output folder (default runs/bench-quality)")


def discover_sets(real_sets, rice, log=print) -> list[BenchSet]:
    """The demo, the real sets under ``real_sets`` (a folder, or a list of folders searched in order) and the
    rice set; a one-line note for each absent one, and for a set whose name an earlier folder already gave."""
    found = [BenchSet("demo", None, None, ["name", "type"])]
    for root in map(Path, [real_sets] if isinstance(real_sets, (str, Path)) else real_sets):
        if not root.is_dir():
            log(f"real sets: skipped, {root} is not a folder")
            continue
        before = len(found)
        for folder in sorted(d for d in root.iterdir() if d.is_dir()):
            missing = [f for f in (TRAIN_FILE, TEST_FILE) if not (folder / f).is_file()]
            if missing:
                log(f"{folder.name}: skipped, {folder} lacks {' and '.join(missing)}")
            elif any(s.name == folder.name for s in found):
                log(f"{folder.name}: skipped, {folder} has the name of a set already found")
            else:
                found.append(BenchSet(folder.name, folder / TRAIN_FILE, folder,
                                      discover_heads(folder / TRAIN_FILE), test=folder / TEST_FILE))
        if len(found) == before:
            log(f"real sets: none under {root} (a set is a folder holding {TRAIN_FILE} and {TEST_FILE})")
    rice = Path(rice)
    if (rice / RICE_FILE).is_file():
        test = rice / RICE_TEST if (rice / RICE_TEST).is_file() else None
        found.append(BenchSet("rice", rice / RICE_FILE, (rice / RICE_FILE).parent, discover_heads(rice / RICE_FILE),
                              test=test, test_images=test.parent if test else None,
                              train_flags=["--skip-bad-images"]))
    else:
        log(f"rice: skipped, no {rice / RICE_FILE}")
    return found


def discover_heads(annotations: Path) -> list[str]:
    """The region attributes of ``annotations`` that take two or more values: those a head can learn."""
    from cropclf.via import read_annotations

    frame = read_annotations(annotations)
    heads = []
    for name in frame.attrs.get("region_attributes", []):
        values = frame[name].dropna().astype(str).str.strip()
        if values[values != ""].nunique() >= 2:
            heads.append(name)
    if not heads:
        raise CropclfError(f"{annotations}: no region attribute takes two or more values, so there is no head "
                           f"to train. Received: attributes {frame.attrs.get('region_attributes', [])}")
    return heads


def run_quality(args, log=print) -> list[dict]:
    """Trains and scores every selected set for every seed; returns one row per (set, seed, head)."""
    seeds = _seeds(args.seeds)
    sets = discover_sets(args.real_sets or ["../shared/real-sets"], args.rice, log)
    if args.sets:
        wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {s.name for s in sets})
        for name in unknown:
            log(f"{name}: skipped, not found")
        sets = [s for s in sets if s.name in wanted]
    out = Path(args.out)
    rows = []
    for s in sets:
        log(f"{s.name}: heads {','.join(s.heads)}; {'test file ' + str(s.test) if s.test else 'own test split'}")
        for seed in seeds:
            report, minutes = train_and_score(s, seed, args, out / "runs" / f"{s.name}-s{seed}", log)
            for head, r in report["heads"].items():
                rows.append({"set": s.name, "seed": seed, "head": head, "regions": report["regions_scored"],
                             "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                             "accuracy_interval": r["intervals"]["accuracy"],
                             "macro_f1_interval": r["intervals"]["macro_f1"],
                             "majority": r["majority_baseline"]["accuracy"], "learned": r["learned"],
                             "minutes": minutes})
    return rows


def train_and_score(s: BenchSet, seed: int, args, run_dir: Path, log=print) -> tuple[dict, float]:
    """``cropclf train`` then ``cropclf evaluate`` for one seed; reuses a run scored with the same flags."""
    train = ["train", "--heads", ",".join(s.heads), "--seed", str(seed), "--out", str(run_dir), *s.train_flags]
    if s.annotations is not None:
        train += ["--annotations", str(s.annotations), "--images", str(s.images)]
    if args.epochs is not None:
        train += ["--epochs", str(args.epochs)]
    if args.image_size:
        train += ["--image-size", args.image_size]
    for item in args.set:
        train += ["--set", item]
    evaluate = ["evaluate", "--run", str(run_dir), "--out", str(run_dir / "evaluation")]
    if s.test is not None:
        evaluate += ["--annotations", str(s.test), "--images", str(s.test_images or s.images)]
    record, report_file = run_dir / "bench_run.json", run_dir / "evaluation" / "report.json"
    if record.is_file() and report_file.is_file():
        done = json.loads(record.read_text(encoding="utf-8"))
        if done.get("commands") == [train, evaluate]:
            log(f"  {s.name} seed {seed}: reusing {run_dir} ({done['minutes']:.1f} min)")
            return json.loads(report_file.read_text(encoding="utf-8")), done["minutes"]
    log(f"  {s.name} seed {seed}: training ...")
    start = time.perf_counter()
    _command(train + ["--no-evaluate", "--overwrite"], run_dir.parent / f"{run_dir.name}.log", "w")
    _command(evaluate, run_dir.parent / f"{run_dir.name}.log", "a")
    minutes = (time.perf_counter() - start) / 60
    record.write_text(json.dumps({"commands": [train, evaluate], "minutes": minutes}) + "\n", encoding="utf-8")
    report = json.loads(report_file.read_text(encoding="utf-8"))
    log(f"  {s.name} seed {seed}: " + ", ".join(f"{h} macro-F1 {r['macro_f1']:.3f}"
                                                 for h, r in report["heads"].items()) + f" ({minutes:.1f} min)")
    return report, minutes


def _command(argv: list[str], log_file: Path, mode: str) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CROPCLF_QUIET": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_file, mode, encoding="utf-8") as f:
        f.write(f"$ cropclf {' '.join(argv)}\n")
        f.flush()
        code = subprocess.run([sys.executable, "-m", "cropclf", *argv], stdout=f, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise CropclfError(f"cropclf {argv[0]} failed (exit {code}); see {log_file}. Received: {tail}")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CropclfError(f"--seeds takes comma-separated integers, e.g. 0,1,2. Received: {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CropclfError(f"--seeds needs one or more distinct integers. Received: {text!r}")
    return seeds


# --- the table: one row per (set, head), mean and spread over seeds ---

COLUMNS = ["set", "head", "seeds", "accuracy", "macro-F1", "macro-F1 interval", "majority baseline",
           "beats majority", "minutes"]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread (sample standard deviation) over seeds, per (set, head), in the order first seen.

    The interval is the mean over seeds of each run's 95 % bootstrap bounds for macro-F1; "beats majority"
    counts the seeds whose evaluation found the head above its majority and chance baselines beyond the
    interval (the report's verdict).
    """
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["head"]), []).append(r)
    table = []
    for (name, head), rs in groups.items():
        acc, f1 = np.array([r["accuracy"] for r in rs]), np.array([r["macro_f1"] for r in rs])
        lo, hi = np.mean([r["macro_f1_interval"] for r in rs], axis=0)
        wins = sum(r["learned"] for r in rs)
        table.append({"set": name, "head": head, "seeds": len(rs), "accuracy": _mean_sd(acc),
                      "macro-F1": _mean_sd(f1), "macro-F1 interval": f"[{lo:.3f}, {hi:.3f}]",
                      "majority baseline": f"{rs[0]['majority']:.3f}",
                      "beats majority": f"{'yes' if wins == len(rs) else 'no'} ({wins}/{len(rs)})",
                      "minutes": f"{np.mean([r['minutes'] for r in rs]):.1f}"})
    return table


def _mean_sd(values) -> str:
    return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def format_table(table: list[dict]) -> str:
    widths = [max([len(c)] + [len(str(t[c])) for t in table]) for c in COLUMNS]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(str(t[c]).ljust(w) for c, w in zip(COLUMNS, widths)) for t in table]
    return "\n".join(lines)


def markdown_table(table: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(t[c]) for c in COLUMNS) + " |" for t in table]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], table: list[dict], header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(header + "\n\n" + markdown_table(table), encoding="utf-8")
    with open(out / "table.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(table)
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(rows[0]) if rows else ["set"])
        w.writeheader()
        w.writerows(rows)


def main_quality(args) -> None:
    if args.epochs is not None and args.epochs < 1:
        raise CropclfError(f"--epochs must be at least 1. Received: {args.epochs}")
    commit = _commit()  # the code the runs train with, not whatever is checked out when they end
    rows = run_quality(args)
    if not rows:
        print("No set to run.")
        return
    table = summarise(rows)
    header = (f"Quality benchmark, {time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit}: seeds "
              f"{args.seeds}, epochs {args.epochs or 'default'}"
              + (f", image size {args.image_size}" if args.image_size else "")
              + (f", {' '.join(args.set)}" if args.set else "")
              + "; mean ± spread (sd) over seeds; interval: 95 % bootstrap of macro-F1 over test images")
    print("\n" + header + "\n" + format_table(table))
    write_outputs(Path(args.out), rows, table, header)
    print(f"Wrote {args.out}/table.md, table.csv and runs.csv")


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return (out.stdout.strip() + ("+changes" if dirty else "")) if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"
