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

import cv2
import numpy as np
import pandas as pd

from cropclf import artifacts
from cropclf.via import read_annotations
from cropclf.config import Config
from cropclf.data.crops import Problem, box_in_crop, canonical_crop, why_not_croppable
from cropclf.data.loading import annotations_path, drop_duplicates
from cropclf.errors import ImageError, LabelError
from cropclf.data.images import load_image, probe_image
from cropclf.data.labels import head_column
from cropclf.plots import ascii_text
from cropclf.progress import Progress
from cropclf.data.splits import SPLITS, split_by_image, split_counts

MAX_CLASSES = 40  # sheet rows per head; beyond this only the most frequent classes are drawn
CELL = 128  # longest side of a crop as drawn in the sheet, in pixels
UNLABELLED = "(unlabelled)"  # how split_counts names regions without a label
# Problem kinds, most serious first: the printed list follows this order, file order within a kind.
KINDS = ("no_regions", "missing_head", "missing_image", "unreadable_image", "outside_image",
         "oversized", "non_finite", "zero_area", "too_small", "duplicate", "unlabelled", "label_variants",
         "undefined", "partly_outside")


def _finding(kind: str, file: str, row: str, message: str, order=None) -> Problem:
    """A `crops.Problem` of one of `KINDS`: ``file`` is the image's name as annotated (or the
    annotation file's), ``row`` ``"row 7"``, ``"region 2"`` (JSON), ``"rows 3-5"`` or ``""``, ``order``
    the position in the frame (problems are listed in file order)."""
    return Problem(file, row, message, kind, order)


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
        findings.append(_finding("no_regions", source.name, "", "the file annotates no region, so "
                                "there is nothing to train on; draw regions in VIA and export"))
    heads = {}
    for head in cfg.data.heads:
        try:
            heads[head] = head_column(frame, head)
        except LabelError as e:
            message = str(e).removeprefix(f"{frame.attrs.get('source')}: ")
            findings.append(_finding("missing_head", source.name, "", message))
    rows = [re.sub(r"^image .* (region \d+)$", r"\1", r) for r in frame["row"]]  # JSON: region N
    sizes = _probe(frame, rows, findings, progress)
    left_out = _check_regions(frame, rows, sizes, heads, cfg.crop.min_size, findings)
    _check_labels(frame, heads, source.name, findings)
    if frame.attrs.get("undefined_values"):
        findings.append(_finding("undefined", source.name, "", f"{frame.attrs['undefined_values']} "
                                "value(s) written as `undefined` by VIA were read as empty"))
    samples = _sample(frame, np.flatnonzero(~left_out), heads, per_class, cfg.train.seed)
    crops = _decode(frame, rows, samples, cfg.crop, findings, left_out, progress)

    # The split training makes: by image, duplicates dropped, the config's fractions and seed.
    kept = drop_duplicates(frame, log=lambda *a: None)  # listed among the problems instead
    assignment, notes = split_by_image(kept, list(heads), cfg.data.split, cfg.train.seed)
    table = _class_table(frame, left_out, assignment, list(heads))
    sheet_path = out_dir / "contact_sheet.png"
    _draw_sheet(frame, rows, samples, crops, table, cfg, findings, source.name, per_class,
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


# ----------------------------------------------------------------------------- checks

def _probe(frame, rows, findings, progress) -> dict:
    """Reads every image's header; a missing or unreadable image is one finding for its rows."""
    sizes = {}
    paths = frame.groupby("path", sort=False).groups
    with Progress(len(paths), "Reading image headers", enabled=progress) as bar:
        for path, index in paths.items():
            try:
                sizes[path] = probe_image(path)
            except ImageError as e:
                missing = not Path(path).is_file()
                message = (f"not found at {path}; check --images" if missing
                           else str(e).removeprefix(f"{path}: "))
                kind = "missing_image" if missing else "unreadable_image"
                findings.append(_finding(kind, frame.at[index[0], "filename"],
                                        _span([rows[k] for k in index]),
                                        f"{message} ({len(index)} region(s) unusable)", index[0]))
            bar.update()
    return sizes


def _check_regions(frame, rows, sizes, heads, min_size, findings) -> np.ndarray:
    """Geometry, labels and duplicates, region by region; returns what training leaves out."""
    left_out = np.zeros(len(frame), bool)
    first = {}  # duplicate key -> location of its first occurrence
    key_cols = ["filename", "shape", "x", "y", "width", "height",
                *(c for c in frame.attrs.get("region_attributes", []) if c in frame.columns)]
    keys = list(zip(*(frame[c] for c in key_cols)))
    labels = {head: frame[column].tolist() for head, column in heads.items()}
    for k, r in enumerate(frame.itertuples(index=False)):
        name, at, (x, y, w, h) = r.filename, rows[k], (r.x, r.y, r.width, r.height)
        size = sizes.get(r.path)
        why = why_not_croppable((x, y, w, h), size, min_size)  # the rule training leaves regions out by
        left_out[k] = size is None or why is not None or r.duplicate
        if why:
            findings.append(_finding(why[0], name, at, f"{r.shape} {why[1]}; training leaves it out", k))
        elif size is not None:
            height, width = size
            box = f"box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) of the {r.shape}"
            if x < 0 or y < 0 or x + w > width or y + h > height:
                past = {"left": -x, "top": -y, "right": x + w - width, "bottom": y + h - height}
                sides = ", ".join(f"{s} {v:.3g} px" for s, v in past.items() if v > 0)
                inside = (min(x + w, width) - max(x, 0)) * (min(y + h, height) - max(y, 0))
                share = f"; {1 - inside / (w * h):.0%} of the box" if w * h > 0 else ""
                findings.append(_finding("partly_outside", name, at, f"{box} extends past the "
                                        f"{width}x{height} image ({sides}{share}); its crop is "
                                        "padded", k))
        for head, column in heads.items():
            if labels[head][k] == "":
                findings.append(_finding("unlabelled", name, at, f"no '{head}' label (column "
                                        f"{column!r}); that head ignores this region", k))
        if r.duplicate:
            findings.append(_finding("duplicate", name, at, "same image, shape and labels as "
                                    f"{first.get(keys[k], 'an earlier region')}; training drops it",
                                    k))
        first.setdefault(keys[k], at)
    return left_out


def _check_labels(frame, heads, source_name, findings) -> None:
    """Classes of one head that differ only in case or spacing are likely typos."""
    for head, column in heads.items():
        counts = Counter(v for v in frame[column] if v != "")
        groups: dict[str, list[str]] = {}
        for label in sorted(counts):
            groups.setdefault(re.sub(r"\s+", " ", label.casefold()), []).append(label)
        for variants in (g for g in groups.values() if len(g) > 1):
            listed = ", ".join(f"{v!r} ({counts[v]})" for v in variants)
            findings.append(_finding("label_variants", source_name, "", f"head '{head}': classes "
                                    f"{listed} differ only in case or spacing; a typo?"))


def _class_table(frame, left_out, assignment, heads) -> pd.DataFrame:
    """Rows (head, class): usable regions per split, and ``left_out`` (duplicates included)."""
    usable = split_counts(frame[~left_out], assignment, heads)
    lost = split_counts(frame[left_out], assignment, heads)
    lost["left_out"] = lost[list(SPLITS)].sum(axis=1)
    table = usable.merge(lost[["head", "class", "left_out"]], on=["head", "class"], how="outer")
    table = table.fillna(0).astype({c: "int64" for c in (*SPLITS, "left_out")})
    table["last"] = table["class"] == UNLABELLED
    return table.sort_values(["head", "last", "class"]).drop(columns="last")


# ----------------------------------------------------------------------------- contact sheet

def _sample(frame, usable, heads, per_class, seed) -> dict:
    """Up to ``per_class`` usable regions per head and class, drawn with an owned RNG."""
    rng = np.random.default_rng([seed, 11])
    out = {}
    for head, column in heads.items():
        labels = frame[column].iloc[usable].replace("", UNLABELLED)
        out[head] = {c: sorted(rng.permutation(np.asarray(idx))[:per_class].tolist())
                     for c, idx in labels.groupby(labels, sort=True).groups.items()}
    return out


def _decode(frame, rows, samples, crop, findings, left_out, progress) -> dict:
    """Decodes each sampled image once and cuts its crops; an image that fails is a finding."""
    wanted = sorted({k for classes in samples.values() for ks in classes.values() for k in ks})
    crops, boxes = {}, frame[["x", "y", "width", "height"]].to_numpy(float)
    by_path = frame.iloc[wanted].groupby("path", sort=False).groups
    with Progress(len(by_path), "Decoding sampled images", enabled=progress) as bar:
        for path, index in by_path.items():
            try:
                image = load_image(path)
                crops.update({k: canonical_crop(image, boxes[k], crop.image_size, crop.margin,
                                                crop.resize, crop.pad_value) for k in index})
            except ImageError as e:
                every = np.flatnonzero(frame["path"].to_numpy() == path)
                left_out[every] = True
                message = str(e).removeprefix(f"{path}: ")
                findings.append(_finding("unreadable_image", frame.at[every[0], "filename"],
                                        _span([rows[k] for k in every]),
                                        f"{message} ({len(every)} region(s) unusable)", every[0]))
            bar.update()
    return crops


def _draw_sheet(frame, rows, samples, crops, table, cfg, findings, source_name, per_class,
                path) -> None:
    """A section per head, a row per class: sampled crops with their box, class, file and row."""
    out_hw, flagged = tuple(cfg.crop.image_size), {f.label for f in findings}
    scale = CELL / max(out_hw)
    dh, dw = round(out_hw[0] * scale), round(out_hw[1] * scale)
    label_w, cw, ch = 170, max(dw, 132) + 6, dh + 3 * 14 + 10  # 3 caption lines under each crop
    width = max(label_w + per_class * cw, 760)
    parts = [_band(width, [f"{source_name}: {len(frame)} regions on "
                           f"{frame['filename'].nunique()} images",
                           f"Crops as the model sees them ({out_hw[0]}x{out_hw[1]}, margin "
                           f"{cfg.crop.margin:g}, {cfg.crop.resize}); magenta: the annotated box; "
                           "red '!': the region has a problem listed in report.json"],
                   (0.55, 0.42), (235, 235, 235))]
    for head in (h for h in cfg.data.heads if h not in samples):
        parts.append(_band(width, [f"head '{head}': no such attribute in the annotations "
                                   "(see the problems in report.json)"], (0.6,), (200, 200, 255)))
    for head, classes in samples.items():
        counts = table[table["head"] == head].set_index("class")
        usable = counts[list(SPLITS)].sum(axis=1)
        shown = set(usable.sort_values(ascending=False, kind="stable").index[:MAX_CLASSES])
        hidden = f"; {len(counts) - len(shown)} rarer class(es) not drawn" if len(counts) > len(
            shown) else ""
        parts.append(_band(width, [f"head '{head}': {len(counts)} class(es), up to {per_class} "
                                   f"random crops each{hidden}"], (0.6,), (210, 225, 245)))
        for cls in (c for c in counts.index if c in shown):  # table order: unlabelled last
            row, n = np.full((ch, width, 3), 255, np.uint8), counts.loc[cls]
            _text(row, cls, (6, 22), 0.55, width=label_w - 8, thick=2)
            _text(row, f"{usable[cls]} usable region(s)", (6, 44), 0.42)
            _text(row, " ".join(f"{s} {n[s]}" for s in SPLITS), (6, 62), 0.42,
                  width=label_w - 8, color=(90, 90, 90))
            if n["left_out"]:
                _text(row, f"{n['left_out']} left out", (6, 80), 0.42, color=(200, 0, 0))
            if cls not in classes:
                _text(row, "no usable region to show", (label_w + 6, dh // 2), 0.5,
                      color=(200, 0, 0))
            for j, k in enumerate(classes.get(cls, [])):
                x0 = label_w + j * cw
                cell = crops.get(k)
                if cell is None:
                    cell = np.full((dh, dw, 3), 200, np.uint8)
                    _text(cell, "unreadable", (4, dh // 2), 0.45, color=(200, 0, 0))
                else:
                    cell = cv2.resize(cell, (dw, dh), interpolation=cv2.INTER_NEAREST)
                    _outline(cell, frame.loc[k, ["x", "y", "width", "height"]].to_numpy(float),
                             out_hw, scale, cfg.crop)
                row[4:4 + dh, x0 + (cw - dw) // 2:x0 + (cw - dw) // 2 + dw] = cell
                caption = [cls, frame.at[k, "filename"], rows[k] + (" !" if k in flagged else "")]
                for i, line in enumerate(caption):
                    red = i == 2 and k in flagged
                    _text(row, line, (x0 + 4, dh + 18 + 14 * i), 0.38, width=cw - 6,
                          color=(200, 0, 0) if red else (0, 0, 0))
            row[-1, :] = 215
            parts.append(row)
    sheet = np.ascontiguousarray(np.concatenate(parts, axis=0)[..., ::-1])
    ok, png = cv2.imencode(".png", sheet)
    if not ok:
        raise ImageError(f"{path}: OpenCV cannot encode the contact sheet. Received: {sheet.shape}")
    artifacts.write_bytes(path, png.tobytes())


def _outline(cell, box, out_hw, scale, crop) -> None:
    """Draws the annotated box on a crop shown at ``scale``; the margin around it is context."""
    x0, y0, x1, y1 = (v * scale for v in box_in_crop(box, out_hw, crop.margin, crop.resize))
    p = (round(x0), round(y0))
    q = (round(x1) - 1, round(y1) - 1)
    cv2.rectangle(cell, (p[0] - 1, p[1] - 1), (q[0] + 1, q[1] + 1), (0, 0, 0), 1, cv2.LINE_4)
    cv2.rectangle(cell, p, q, (255, 0, 255), 1, cv2.LINE_4)  # black-edged: shows on magenta too


def _band(width, lines, sizes, color) -> np.ndarray:
    """A full-width strip of text lines: the title, a head's header."""
    heights = [round(34 * s) + 6 for s in sizes]
    band = np.full((sum(heights) + 8, width, 3), color, np.uint8)
    for i, (line, size) in enumerate(zip(lines, sizes)):
        _text(band, line, (6, sum(heights[:i + 1])), size, width=width - 12,
              thick=1 if size < 0.6 else 2)
    return band


def _text(img, text, org, size, width=None, color=(0, 0, 0), thick=1) -> None:
    """ASCII text (OpenCV's fonts have no other glyphs), cut in the middle to fit ``width``."""
    text = ascii_text(str(text))
    font = cv2.FONT_HERSHEY_SIMPLEX
    while width and len(text) > 4 and cv2.getTextSize(text, font, size, thick)[0][0] > width:
        half = (len(text) - 3) // 2
        text = text[:half] + ".." + text[-(len(text) - half - 3):]
    cv2.putText(img, text, org, font, size, color, thick, cv2.LINE_AA)


def _span(locs) -> str:
    """``row 3``, ``row 4``, ``row 5``, ``row 9`` -> ``rows 3-5, 9`` (likewise ``regions``)."""
    parsed = [re.fullmatch(r"(row|region) (\d+)", s) for s in locs]
    if not all(parsed) or len({m[1] for m in parsed}) > 1:
        return locs[0] + (f" and {len(locs) - 1} more" if len(locs) > 1 else "")
    runs = []
    for n in sorted(int(m[2]) for m in parsed):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)
    return f"{parsed[0][1]}{'s' if len(parsed) > 1 else ''} {text}"
