"""Builds small VIA annotation files the way VIA writes them, for tests that use ``tmp_path``."""

from __future__ import annotations

import json
from pathlib import Path

VIA_HEADER = ("filename,file_size,file_attributes,region_count,region_id,"
              "region_shape_attributes,region_attributes")

# Three images: two regions on a.jpg, one polygon on b.jpg, none on c.jpg (non-square boxes).
IMAGES = [
    ("a.jpg", {"caption": "first"}, [
        ({"name": "rect", "x": 10, "y": 20, "width": 30, "height": 40}, {"name": "cat"}),
        ({"name": "point", "cx": 5, "cy": 7}, {"name": " dog "}),
    ]),
    ("b.jpg", {"caption": "  "}, [
        ({"name": "polygon", "all_points_x": [1, 9, 4], "all_points_y": [2, 3, 8]},
         {"name": "cow"}),
    ]),
    ("c.jpg", {}, []),
]
# Boxes (x, y, width, height) and labels expected from IMAGES, in row order.
EXPECTED = [
    ("a.jpg", 0, "rect", (10, 20, 30, 40), "cat", "first"),
    ("a.jpg", 1, "point", (5, 7, 0, 0), "dog", "first"),
    ("b.jpg", 0, "polygon", (1, 2, 8, 6), "cow", ""),
]


def cell(value) -> str:
    """Quotes a JSON value as one VIA CSV cell (compact JSON, every quote doubled)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return '"' + text.replace('"', '""') + '"'


def csv_row(filename, file_attrs, count, region_id, shape, attrs, size=100) -> str:
    """One VIA CSV line; ``shape`` and ``attrs`` are dicts or raw cell text."""
    return ",".join([filename, str(size), cell(file_attrs), str(count), str(region_id),
                     cell(shape), cell(attrs)])


def via_csv_lines(images=IMAGES) -> list[str]:
    """The data lines VIA 2 writes for ``images`` (an image without regions gets one row)."""
    lines = []
    for filename, file_attrs, regions in images:
        if not regions:
            lines.append(csv_row(filename, file_attrs, 0, 0, {}, {}))
        for i, (shape, attrs) in enumerate(regions):
            lines.append(csv_row(filename, file_attrs, len(regions), i, shape, attrs))
    return lines


def via_json(images=IMAGES, v1=False) -> dict:
    """A VIA JSON export: v1 has regions as a {"0": ...} dict plus fileref/base64_img_data."""
    out = {}
    for filename, file_attrs, regions in images:
        items = [{"shape_attributes": s, "region_attributes": a} for s, a in regions]
        entry = {"filename": filename, "size": 100, "file_attributes": file_attrs}
        if v1:
            entry.update(fileref="", base64_img_data="",
                         regions={str(i): r for i, r in enumerate(items)})
        else:
            entry["regions"] = items
        out[f"{filename}100"] = entry
    return out


def write(folder: Path, name: str, content) -> Path:
    """Writes text (as UTF-8, no newline translation), bytes, or a dict/list as compact JSON."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, (dict, list)):
        content = json.dumps(content, separators=(",", ":"))
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path
