"""Writing predictions back into an annotation file, in its own format, for a person to correct in VIA.

The same file comes out (VIA 1/2 JSON, VIA 2 project, VIA CSV or the flat CSV) with the predicted
labels as region attributes: regions are matched to the reader's frame by (filename, region_id),
numbered exactly as `cropclf.annotations` numbers them; other attributes and skipped regions keep
what they had; a VIA CSV is re-emitted in VIA's own style (7 columns, compact JSON, doubled quotes,
no trailing newline).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pandas as pd

from cropclf import artifacts
from cropclf.annotations import _repair  # the reader's fix for VIA's bare `undefined`

_OPTION_TYPES = ("radio", "dropdown", "image", "checkbox")  # VIA stores option ids for these


def write_via(source, out, frame: pd.DataFrame, predictions: pd.DataFrame, heads) -> Path:
    """Writes ``source`` again, in its own format, with predicted labels as region attributes.

    Regions are matched to ``frame`` (read from ``source``) by filename and region id, numbered as
    `read_annotations` numbers them. Other attributes stay; skipped regions keep theirs.
    """
    occurrence = frame.groupby(["filename", "region_id"], sort=False).cumcount()
    labels = {(frame.at[i, "filename"], int(frame.at[i, "region_id"]), int(occurrence[i])):
              {h: predictions.at[i, h] for h in heads} for i in predictions.index}
    text = Path(source).read_bytes().decode("utf-8-sig")
    fmt = frame.attrs.get("format", "")
    if fmt in ("via1_csv", "via2_csv"):
        text = _via_csv(text, labels)
    elif fmt == "flat_csv":
        text = _flat_csv(text, labels, heads)
    else:
        text = _via_json(text, labels, heads)
    return artifacts.write_text(out, text)


def _via_json(text: str, labels: dict, heads) -> str:
    data = _load(text)
    project = "_via_img_metadata" in data
    images = data["_via_img_metadata"] if project else data
    specs = data.get("_via_attributes") if project else None
    defined = specs.setdefault("region", {}) if isinstance(specs, dict) else None
    if isinstance(defined, dict):  # a project: VIA shows only the attributes it defines
        for h in heads:
            defined.setdefault(h, {"type": "text", "description": "", "default_value": ""})
    else:
        defined = {}
    seen: dict = {}
    for image in images.values():
        regions = image.get("regions", [])
        for i, region in enumerate(regions.values() if isinstance(regions, dict) else regions):
            if not region.get("shape_attributes"):
                continue  # not a region to the reader either
            key = _key(seen, image["filename"], i)
            if key in labels:
                attrs = region.setdefault("region_attributes", {})
                for h, value in labels[key].items():
                    attrs[h] = _option_value(value, defined.get(h))
    indent = re.match(r"\s*[{\[]\s*\n([ \t]+)", text)
    dumped = json.dumps(data, ensure_ascii=False, indent=len(indent[1]) if indent else None,
                        separators=None if indent else (",", ":"))
    return dumped + "\n" * text.endswith("\n")


def _via_csv(text: str, labels: dict) -> str:
    """VIA's own style: 7 columns, filename and size raw, JSON cells quoted, no trailing newline."""
    records = _records(text)
    lines, seen = [",".join(records[0][:7])], {}
    for fields in records[1:]:
        filename, size, file_attrs, count, region_id, shape, attrs = (fields + [""] * 7)[:7]
        if _obj(shape):
            key = _key(seen, filename, int(region_id))
            if key in labels:
                attrs = _compact(_obj(attrs) | labels[key])
        lines.append(",".join([_raw(filename), size, _quote(file_attrs), count, region_id,
                               _quote(shape), _quote(attrs)]))
    return "\n".join(lines)


def _flat_csv(text: str, labels: dict, heads) -> str:
    """The flat CSV (``filename``, label columns, ``region_shape_attributes``), heads filled in."""
    records = _records(text)
    header = records[0]
    while len(header) > 1 and not header[-1].strip():
        header = header[:-1]  # trailing commas, as VIA 1.0.2 wrote them
    names = [f.strip() for f in header]
    names[0] = names[0].lstrip("#").strip()
    has_cell = "region_attributes" in names
    added = [h for h in heads if h not in names and not has_cell]
    rows, counters, seen = [header + added], {}, {}
    for fields in records[1:]:
        fields = (fields + [""] * len(names))[:len(names)] + [""] * len(added)
        cells = dict(zip(names, fields))
        filename = cells["filename"]
        counters[filename] = counters.get(filename, -1) + 1
        if _obj(cells["region_shape_attributes"]):
            key = _key(seen, filename, int(cells.get("region_id", counters[filename])))
            for h, value in labels.get(key, {}).items():
                if h in names or h in added:
                    fields[(names + added).index(h)] = value
            if has_cell and key in labels:
                fields[names.index("region_attributes")] = _compact(
                    _obj(cells["region_attributes"]) | labels[key])
        rows.append(fields)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue() if text.endswith(("\n", "\r")) else buffer.getvalue()[:-1]


def _key(seen: dict, filename: str, region_id: int) -> tuple:
    """(filename, region_id, n): n tells apart regions that share both (repeated images)."""
    n = seen.get((filename, region_id), -1) + 1
    seen[(filename, region_id)] = n
    return filename, region_id, n


def _option_value(label: str, spec):
    """A label as VIA stores it: an option id (radio, dropdown, image) or ``{id: true}``."""
    if not isinstance(spec, dict) or spec.get("type") not in _OPTION_TYPES:
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


def _records(text: str) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(text, newline="")) if any(f.strip() for f in r)]


def _load(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(_repair(text)[0])  # the reader read it, so this succeeds


def _obj(cell: str) -> dict:
    value = _load(cell) if cell.strip() else {}
    return value if isinstance(value, dict) else {}


def _compact(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _quote(cell: str) -> str:
    return '"' + (cell.strip() or "{}").replace('"', '""') + '"'


def _raw(filename: str) -> str:
    """VIA writes file names unquoted; quote only what would otherwise break the row."""
    return '"' + filename.replace('"', '""') + '"' if re.search(r'[,"\r\n]', filename) else filename
