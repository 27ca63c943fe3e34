"""Looks at a dataset before training: counts, the split training would make, every problem, and a
contact sheet of sample crops per class, so that a person can check boxes and labels by eye.

Reads image headers only (Pillow) and decodes just the images sampled into the sheet. Imports no
TensorFlow or Keras, so it starts in about a second.

    from cropclf.inspection import inspect_dataset
    report = inspect_dataset(Config(), "inspect/demo")  # contact_sheet.png + report.json
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from cropclf import artifacts
from cropclf.config import Config
from cropclf.data.crops import Problem
from cropclf.data.labels import head_column
from cropclf.data.loading import annotations_path, drop_duplicates
from cropclf.data.splits import SPLITS, split_by_image
from cropclf.errors import LabelError
from cropclf.inspection.checks import (KINDS, check_labels, check_regions, class_table, finding, probe_images)
from cropclf.inspection.sheet import decode_samples, draw_sheet, sample
from cropclf.via import read_annotations

def describe(problem: dict) -> str:
    """One printed line for a problem as ``report.json`` lists it."""
    at = f"{problem['file']} ({problem['row']})" if problem["row"] else problem["file"]
    return f"{problem['kind'].replace('_', ' '):<17} {at}: {problem['message']}"


def inspect_dataset(cfg: Config, out_dir, per_class: int = 8, log=print,
                    progress: bool = True) -> dict:
    """Inspects the annotations named by ``cfg``; writes ``contact_sheet.png`` and ``report.json``.

    Problems in the data are reported (printed through ``log`` and listed in the report), never
    raised: only an annotation file that cannot be read is an error.

    Args:
        cfg: the config training would use (annotations, images, heads, split, seed, crop).
        out_dir: folder for ``contact_sheet.png`` and ``report.json``.
        per_class: crops drawn per class and head.
        log: receives the printed report, line by line.
        progress: progress bars on stderr while reading image headers and decoding.

    Returns:
        The report, as written to ``report.json``.

    Raises:
        AnnotationError: the annotation file cannot be read.
    """
    out_dir = Path(out_dir)
    source = annotations_path(cfg, log)
    frame = read_annotations(source, image_root=cfg.data.images,
                             allow_outside_root=cfg.data.allow_outside_root).reset_index(drop=True)
    findings: list[Problem] = []
    if frame.empty:
        findings.append(finding("no_regions", source.name, "", "the file annotates no region, so "
                                "there is nothing to train on; draw regions in VIA and export"))
    heads = {}
    for head in cfg.data.heads:
        try:
            heads[head] = head_column(frame, head)
        except LabelError as e:
            message = str(e).removeprefix(f"{frame.attrs.get('source')}: ")
            findings.append(finding("missing_head", source.name, "", message))
    rows = [re.sub(r"^image .* (region \d+)$", r"\1", r) for r in frame["row"]]  # JSON: region N
    sizes = probe_images(frame, rows, findings, progress)
    left_out = check_regions(frame, rows, sizes, heads, cfg.crop.min_size, findings)
    check_labels(frame, heads, source.name, findings)
    if frame.attrs.get("undefined_values"):
        findings.append(finding("undefined", source.name, "", f"{frame.attrs['undefined_values']} "
                                "value(s) written as `undefined` by VIA were read as empty"))
    samples = sample(frame, np.flatnonzero(~left_out), heads, per_class, cfg.train.seed)
    crops = decode_samples(frame, rows, samples, cfg.crop, findings, left_out, progress)

    # The split training makes: by image, duplicates dropped, the config's fractions and seed.
    kept = drop_duplicates(frame, log=lambda *a: None)  # listed among the problems instead
    assignment, notes = split_by_image(kept, list(heads), cfg.data.split, cfg.train.seed)
    table = class_table(frame, left_out, assignment, list(heads))
    sheet_path = out_dir / "contact_sheet.png"
    draw_sheet(frame, rows, samples, crops, table, cfg, findings, source.name, per_class,
                sheet_path)
    findings.sort(key=lambda f: (KINDS.index(f.kind), -1 if f.label is None else f.label))

    bad = Counter(f.kind for f in findings)
    report = {
        "annotations": str(source), "format": frame.attrs.get("format"),
        "images": {"in_file": len(frame.attrs.get("images", [])),
                   "with_regions": int(frame["filename"].nunique()),
                   "without_regions": int(frame.attrs.get("images_without_regions", 0)),
                   "missing": bad["missing_image"], "unreadable": bad["unreadable_image"]},
        "regions": len(frame),
        "shapes": {k: int(v) for k, v in frame["shape"].value_counts().items()},
        "duplicates": int(frame["duplicate"].sum()), "left_out_of_training": int(left_out.sum()),
        "split": {"fractions": list(cfg.data.split), "seed": cfg.train.seed,
                  "images": {s: sum(v == s for v in assignment.values()) for s in SPLITS},
                  "notes": notes},
        "heads": {h: {"column": c, "classes": {
            r["class"]: {k: int(r[k]) for k in (*SPLITS, "left_out")}
            for _, r in table[table["head"] == h].iterrows()}} for h, c in heads.items()},
        "problem_counts": {k: bad[k] for k in KINDS if bad[k]},
        "problems": [{"kind": f.kind, "file": f.file, "row": f.row, "message": f.reason} for f in findings],
        "contact_sheet": {"path": str(sheet_path), "crops": len(crops), "per_class": per_class},
        "config": cfg.to_dict(),
    }
    artifacts.write_json(out_dir / "report.json", report)
    for line in format_report(report):
        log(line)
    return report


def format_report(report: dict) -> list[str]:
    """The printed summary: counts, class counts per head and split, then every problem."""
    im, sp = report["images"], report["split"]
    shapes = ", ".join(f"{k} {v}" for k, v in report["shapes"].items()) or "none"
    fractions = "/".join(f"{f:g}" for f in sp["fractions"])
    lines = [f"Annotations: {report['annotations']} ({report['format']})",
             f"Images: {im['in_file']} in the file, {im['with_regions']} with regions, "
             f"{im['without_regions']} without; {im['missing']} missing, "
             f"{im['unreadable']} unreadable",
             f"Regions: {report['regions']} ({shapes}); {report['duplicates']} duplicate; "
             f"{report['left_out_of_training']} would be left out of training",
             f"Split by image (seed {sp['seed']}, fractions {fractions}): "
             + ", ".join(f"{n} {s}" for s, n in sp["images"].items()) + " images"]
    for head, h in report["heads"].items():
        lines += [f"head '{head}' (column {h['column']!r}): {len(h['classes'])} class(es); "
                  "usable regions per split, and regions training leaves out",
                  f"  {'class':<24}{'train':>7}{'val':>7}{'test':>7}{'left out':>10}"]
        lines += [f"  {c[:24]:<24}{n['train']:>7}{n['val']:>7}{n['test']:>7}{n['left_out']:>10}"
                  for c, n in h["classes"].items()]
    lines += [f"split note: {n}" for n in sp["notes"]]
    problems = report["problems"]
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report["problem_counts"].items())
    lines.append(f"Problems: {len(problems)}" + (
        f" ({counts}); row/region numbers refer to {report['annotations']}" if problems else ""))
    lines += [f"  {describe(p)}" for p in problems]
    sheet = report["contact_sheet"]
    lines += [f"Contact sheet: {sheet['path']} ({sheet['crops']} crops)",
              f"Report: {Path(sheet['path']).with_name('report.json')}"]
    return lines
