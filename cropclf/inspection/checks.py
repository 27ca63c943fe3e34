"""The dataset checks of `inspect_dataset`: image headers, each region against the rule training leaves
regions out by (`data.crops.why_not_croppable`), labels, and the class table per split."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cropclf.data.crops import Problem, why_not_croppable
from cropclf.data.images import probe_image
from cropclf.data.splits import SPLITS, split_counts
from cropclf.errors import ImageError
from cropclf.progress import Progress

UNLABELLED = "(unlabelled)"  # how split_counts names regions without a label
# Problem kinds, most serious first: the printed list follows this order, file order within a kind.
KINDS = ("no_regions", "missing_head", "missing_image", "unreadable_image", "outside_image",
         "oversized", "non_finite", "zero_area", "too_small", "duplicate", "unlabelled", "label_variants",
         "undefined", "partly_outside")


def finding(kind: str, file: str, row: str, message: str, order=None) -> Problem:
    """A `crops.Problem` of one of `KINDS`: ``file`` is the image's name as annotated (or the
    annotation file's), ``row`` ``"row 7"``, ``"region 2"`` (JSON), ``"rows 3-5"`` or ``""``, ``order``
    the position in the frame (problems are listed in file order)."""
    return Problem(file, row, message, kind, order)


def probe_images(frame, rows, findings, progress) -> dict:
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
                findings.append(finding(kind, frame.at[index[0], "filename"],
                                        span([rows[k] for k in index]),
                                        f"{message} ({len(index)} region(s) unusable)", index[0]))
            bar.update()
    return sizes


def check_regions(frame, rows, sizes, heads, min_size, findings) -> np.ndarray:
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
            findings.append(finding(why[0], name, at, f"{r.shape} {why[1]}; training leaves it out", k))
        elif size is not None:
            height, width = size
            box = f"box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) of the {r.shape}"
            if x < 0 or y < 0 or x + w > width or y + h > height:
                past = {"left": -x, "top": -y, "right": x + w - width, "bottom": y + h - height}
                sides = ", ".join(f"{s} {v:.3g} px" for s, v in past.items() if v > 0)
                inside = (min(x + w, width) - max(x, 0)) * (min(y + h, height) - max(y, 0))
                share = f"; {1 - inside / (w * h):.0%} of the box" if w * h > 0 else ""
                findings.append(finding("partly_outside", name, at, f"{box} extends past the "
                                        f"{width}x{height} image ({sides}{share}); its crop is "
                                        "padded", k))
        for head, column in heads.items():
            if labels[head][k] == "":
                findings.append(finding("unlabelled", name, at, f"no '{head}' label (column "
                                        f"{column!r}); that head ignores this region", k))
        if r.duplicate:
            findings.append(finding("duplicate", name, at, "same image, shape and labels as "
                                    f"{first.get(keys[k], 'an earlier region')}; training drops it",
                                    k))
        first.setdefault(keys[k], at)
    return left_out


def check_labels(frame, heads, source_name, findings) -> None:
    """Classes of one head that differ only in case or spacing are likely typos."""
    for head, column in heads.items():
        counts = Counter(v for v in frame[column] if v != "")
        groups: dict[str, list[str]] = {}
        for label in sorted(counts):
            groups.setdefault(re.sub(r"\s+", " ", label.casefold()), []).append(label)
        for variants in (g for g in groups.values() if len(g) > 1):
            listed = ", ".join(f"{v!r} ({counts[v]})" for v in variants)
            findings.append(finding("label_variants", source_name, "", f"head '{head}': classes "
                                    f"{listed} differ only in case or spacing; a typo?"))


def class_table(frame, left_out, assignment, heads) -> pd.DataFrame:
    """Rows (head, class): usable regions per split, and ``left_out`` (duplicates included)."""
    usable = split_counts(frame[~left_out], assignment, heads)
    lost = split_counts(frame[left_out], assignment, heads)
    lost["left_out"] = lost[list(SPLITS)].sum(axis=1)
    table = usable.merge(lost[["head", "class", "left_out"]], on=["head", "class"], how="outer")
    table = table.fillna(0).astype({c: "int64" for c in (*SPLITS, "left_out")})
    table["last"] = table["class"] == UNLABELLED
    return table.sort_values(["head", "last", "class"]).drop(columns="last")


def span(locs) -> str:
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
