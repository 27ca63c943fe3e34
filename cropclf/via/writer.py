"""Writing predictions back into an annotation file, in its own format, for a person to correct in VIA.

The same file comes out (VIA 1/2 JSON, VIA 2 project, VIA CSV or the flat CSV) with the predictions
as region attributes, losing nothing: a region a person labelled keeps its label, the prediction
goes beside it (``<head>_predicted``, ``<head>_score``); only unlabelled regions get the head filled.
Regions are matched to the reader's frame by its ``region_key`` column (the region's position in the
file, `vocabulary.REGION_KEY`), counted here as the reader counts it; other attributes and skipped
regions keep what they had; a VIA CSV is re-emitted in VIA's own style (`vocabulary`: 7 columns,
compact JSON, doubled quotes, no trailing newline).
Images can be reordered (least sure first: VIA lists images in file order) and filtered.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pandas as pd

from cropclf import artifacts
from cropclf.errors import LabelError
from cropclf.data.labels import head_column
from cropclf.via.vocabulary import (OPTION_TYPES, REGION_KEY, VIA_CSV_COLUMNS, csv_records, dump, header_names,
                                    quote_filename, quote_json_cell, repair)

PREDICTED, SCORE = "{}_predicted", "{}_score"  # the attributes a prediction goes to beside a label
DESCRIPTIONS = {PREDICTED: "cropclf's predicted label (not a human label)",
                SCORE: "cropclf's score for its prediction, 0-1 (low: look here first)"}


def write_via(source, out, frame: pd.DataFrame, predictions: pd.DataFrame, heads, *,
              overwrite_labels: bool = False, least_sure_first: bool = True,
              only_below: float | None = None) -> Path:
    """Writes ``source`` again, in its own format, with the predictions as region attributes.

    Per head ``h``, every classified region gets ``h_predicted`` (the label) and ``h_score``; the
    head attribute ``h`` itself is filled only where it is empty (no human label), unless
    ``overwrite_labels``. Everything else stays as it was; in a VIA 2 project the new attributes
    are declared as text attributes, so VIA shows them as their own fields.

    Args:
        source: the annotation file ``frame`` was read from.
        out: where to write.
        frame: `read_annotations(source)`; regions are matched by its ``region_key``.
        predictions: `predict_regions` output (index: the frame's; ``h`` and ``h_score`` per head).
        heads: the heads to write.
        overwrite_labels: replace human labels with predicted ones (the old behaviour).
        least_sure_first: order images by their least-sure region (lowest score over all heads),
            lowest first; images without a classified region keep their order, after the others.
        only_below: keep only images holding a region scored below this (on some head); those
            keep all their regions, but only the regions below it get prediction attributes.
    """
    human = {h: _human_values(frame, h) for h in heads}
    values, region_score = {}, {}
    for i in predictions.index:
        score = min(float(predictions.at[i, SCORE.format(h)]) for h in heads)
        region_score[i] = score
        if only_below is not None and not score < only_below:
            continue
        attrs = {}
        for h in heads:
            label = predictions.at[i, h]
            if overwrite_labels or not human[h].get(i, ""):
                attrs[h] = label
            attrs[PREDICTED.format(h)] = label
            attrs[SCORE.format(h)] = f"{float(predictions.at[i, SCORE.format(h)]):.4f}"
        values[i] = attrs
    rank = _image_rank(frame, region_score) if least_sure_first or only_below is not None else None
    keep = None
    if only_below is not None:
        keep = {frame.at[i, "filename"] for i in values}
    declare = {a.format(h): d for h in heads for a, d in DESCRIPTIONS.items()}
    return write_attributes(source, out, frame, values, rank=rank if least_sure_first else None,
                            keep_images=keep, declare=declare, heads=heads)


def write_attributes(source, out, frame: pd.DataFrame, values: dict, *, rank: dict | None = None,
                     keep_images: set | None = None, declare: dict | None = None,
                     heads=()) -> Path:
    """Writes ``source`` again with region attributes set: ``values`` maps a frame index to
    ``{attribute: label}``. Regions not in ``values`` keep what they had.

    Args:
        rank: filename -> sort key; images are written lowest first, the unranked after them in
            file order (VIA lists images in file order).
        keep_images: when given, only images with these filenames are written.
        declare: attribute -> description, declared as text attributes in a VIA 2 project.
        heads: attributes declared as text in a project when it lacks them (label attributes).
    """
    labels = {int(frame.at[i, REGION_KEY]): v for i, v in values.items()}
    order = _Order(rank, keep_images)
    text = Path(source).read_bytes().decode("utf-8-sig")
    fmt = frame.attrs.get("format", "")
    if fmt in ("via1_csv", "via2_csv"):
        text = _via_csv(text, labels, order)
    elif fmt == "flat_csv":
        text = _flat_csv(text, labels, order)
    else:
        definitions = {h: "" for h in heads} | dict(declare or {})
        text = _via_json(text, labels, definitions, order)
    return artifacts.write_text(out, text)


def _human_values(frame: pd.DataFrame, head: str) -> dict:
    """Index -> the label a person gave (``""``: none), as the reader encodes it."""
    try:
        column = head_column(frame, head)
    except LabelError:  # the file has no such attribute yet: nothing is labelled
        return {}
    return frame[column].astype(str).to_dict()


def _image_rank(frame: pd.DataFrame, region_score: dict) -> dict:
    """Filename -> the lowest score of its classified regions."""
    rank: dict = {}
    for i, score in region_score.items():
        name = frame.at[i, "filename"]
        rank[name] = min(rank.get(name, score), score)
    return rank


class _Order:
    """Which images to write, and in what order: ranked ones lowest first, then the rest."""

    def __init__(self, rank: dict | None, keep: set | None):
        self.rank, self.keep = rank, keep

    def apply(self, items: list, filename_of) -> list:
        """``items`` in file order -> the kept ones, reordered (a stable sort: ties keep order)."""
        items = [x for x in items if self.keep is None or filename_of(x) in self.keep]
        if self.rank is None:
            return items
        inf = float("inf")
        return sorted(items, key=lambda x: self.rank.get(filename_of(x), inf))


def _via_json(text: str, labels: dict, definitions: dict, order: _Order) -> str:
    data = _load(text)
    project = "_via_img_metadata" in data
    images = data["_via_img_metadata"] if project else data
    specs = data.get("_via_attributes") if project else None
    defined = specs.setdefault("region", {}) if isinstance(specs, dict) else None
    if isinstance(defined, dict):  # a project: VIA shows only the attributes it defines
        for name, description in definitions.items():
            defined.setdefault(name, {"type": "text", "description": description,
                                      "default_value": ""})
    else:
        defined = {}
    key = -1
    for image in images.values():
        regions = image.get("regions", [])
        for region in regions.values() if isinstance(regions, dict) else regions:
            key += 1  # every region object, as the reader counts them
            if key in labels:
                attrs = region.setdefault("region_attributes", {})
                for name, value in labels[key].items():
                    attrs[name] = _option_value(value, defined.get(name))
    kept = dict(order.apply(list(images.items()), lambda kv: kv[1].get("filename")))
    if project:
        data["_via_img_metadata"] = kept  # same key: it keeps its place in the file
        ids = data.get("_via_image_id_list")
        if isinstance(ids, list):  # VIA 2.0.10+ lists images in this order
            position = {k: n for n, k in enumerate(kept)}
            data["_via_image_id_list"] = sorted(
                (k for k in ids if k in position or k not in images),
                key=lambda k: position.get(k, len(position)))
    else:
        data = kept
    indent = re.match(r"\s*[{\[]\s*\n([ \t]+)", text)
    dumped = json.dumps(data, ensure_ascii=False, indent=len(indent[1]) if indent else None,
                        separators=None if indent else (",", ":"))
    return dumped + "\n" * text.endswith("\n")


def _via_csv(text: str, labels: dict, order: _Order) -> str:
    """VIA's own style: 7 columns, filename and size raw, JSON cells quoted, no trailing newline."""
    records = [fields for _, fields in csv_records(text)]
    rows = []
    for key, fields in enumerate(records[1:]):  # the reader's region key
        filename, size, file_attrs, count, region_id, shape, attrs = (fields + [""] * 7)[:7]
        if key in labels:
            attrs = dump(_obj(attrs) | labels[key])
        rows.append((filename, ",".join([quote_filename(filename), size, quote_json_cell(file_attrs), count,
                                         region_id, quote_json_cell(shape), quote_json_cell(attrs)])))
    lines = [",".join(records[0][:len(VIA_CSV_COLUMNS)])] + [line for _, line in _grouped(rows, order)]
    return "\n".join(lines)


def _flat_csv(text: str, labels: dict, order: _Order) -> str:
    """The flat CSV (``filename``, label columns, ``region_shape_attributes``), values filled in."""
    records = [fields for _, fields in csv_records(text)]
    names = header_names(records[0])
    header = records[0][:len(names)]  # without the trailing commas VIA 1.0.2 wrote
    has_cell = "region_attributes" in names
    wanted = dict.fromkeys(a for v in labels.values() for a in v)
    added = [a for a in wanted if a not in names and not has_cell]
    rows = []
    for key, fields in enumerate(records[1:]):  # the reader's region key
        fields = (fields + [""] * len(names))[:len(names)] + [""] * len(added)
        cells = dict(zip(names, fields))
        filename = cells["filename"]
        if key in labels:
            for name, value in labels[key].items():
                if name in names or name in added:
                    fields[(names + added).index(name)] = value
            if has_cell and key in labels:
                fields[names.index("region_attributes")] = dump(
                    _obj(cells["region_attributes"]) | labels[key])
        rows.append((filename, fields))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(
        [header + added] + [f for _, f in _grouped(rows, order)])
    return buffer.getvalue() if text.endswith(("\n", "\r")) else buffer.getvalue()[:-1]


def _grouped(rows: list, order: _Order) -> list:
    """(filename, row) pairs with each image's rows together, images in ``order``'s order.

    Left in file order when nothing reorders or drops images, so an untouched file stays the same.
    """
    if order.rank is None and order.keep is None:
        return rows
    groups: dict = {}
    for filename, row in rows:
        groups.setdefault(filename, []).append((filename, row))
    return [r for _, group in order.apply(list(groups.items()), lambda kv: kv[0]) for r in group]


def _option_value(label: str, spec):
    """A label as VIA stores it: an option id (radio, dropdown, image) or ``{id: true}``."""
    if not isinstance(spec, dict) or spec.get("type") not in OPTION_TYPES:
        return label
    options = spec.setdefault("options", {})
    if not isinstance(options, dict):
        return label
    by_label = {str(v).strip(): k for k, v in options.items()}  # the reader shows labels first
    ids = []
    for part in label.split(";") if spec["type"] == "checkbox" else [label]:
        option = by_label.get(part, part if part in options else None)
        if option is None:  # a class VIA has no option for: add it, so VIA can show it
            options[part] = option = part
        ids.append(option)
    return {i: True for i in ids} if spec["type"] == "checkbox" else ids[0]


def _load(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(repair(text)[0])  # the reader read it, so this succeeds


def _obj(cell: str) -> dict:
    value = _load(cell) if cell.strip() else {}
    return value if isinstance(value, dict) else {}
