"""Reads VIA 1.x/2.x annotation exports (CSV, JSON, project) into one table with a row per region.

The variant is detected from the content, never from the file name. Shapes become their enclosing,
unclipped axis-aligned box in image pixels; region and file attributes become string columns.
Only the standard library and pandas: no framework is imported here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import pandas as pd

from cropclf.errors import AnnotationError, where

FIXED_COLUMNS = ("filename", "path", "region_id", "shape", "x", "y", "width", "height", "row")
VIA_CSV_COLUMNS = ("filename", "file_size", "file_attributes", "region_count", "region_id",
                   "region_shape_attributes", "region_attributes")
SHAPE_KEYS = {"rect": ("x", "y", "width", "height"), "circle": ("cx", "cy", "r"),
              "ellipse": ("cx", "cy", "rx", "ry"), "polygon": ("all_points_x", "all_points_y"),
              "polyline": ("all_points_x", "all_points_y"), "point": ("cx", "cy")}
_OPTION_TYPES = {"radio", "dropdown", "image", "checkbox"}  # attribute types that store option ids
MAX_COORDINATE = 1_000_000  # px: beyond any image side this tool decodes; larger is a typo or junk
# A JSON string (skipped as a whole), a bare `undefined` outside strings, or a trailing comma.
_REPAIR = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|\bundefined\b|,(?=\s*[}\]])', re.S)
_VIA3_CSV = re.compile(r"^#\s*(SHAPE_ID|CSV_HEADER|FLAG_ID)\b|^metadata_id,file_list", re.M)
_VIA3_HINT = ("This is a VIA 3 file, which this tool does not read. Open the images in VIA 2 and "
              "export with 'Annotation > Export Annotations' as a VIA 2 CSV/JSON.")


def read_annotations(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                     allow_outside_root: bool = False) -> pd.DataFrame:
    """Reads a VIA annotation file into a DataFrame with one row per region.

    Args:
        path: A VIA 1.x/2.x CSV or JSON export, a VIA 2.x project file, or a flat CSV with
            ``filename``, label columns and ``region_shape_attributes``.
        image_root: Folder the image file names are resolved against. Defaults to the folder of
            the annotation file (then to a project's ``default_filepath`` for images not found).
        allow_outside_root: Accept file names that point outside the image root.

    Returns:
        Columns ``filename, path, region_id, shape, x, y, width, height, row, duplicate``, then
        one string column per region attribute (``region:<name>`` where the name is one of those
        columns), then ``file:<name>`` per file attribute. ``duplicate`` is true for a region with
        the same image, shape and attribute values as an earlier one (kept, so rows stay
        numbered). ``df.attrs`` holds ``source, format`` (``via1_csv, via2_csv, flat_csv,
        via1_json, via2_json`` or ``via2_project``), ``images, images_without_regions,
        undefined_values, duplicate_regions, region_attributes, file_attributes``.

    Raises:
        AnnotationError: The file cannot be read, is empty, not UTF-8, a VIA 3, VIA 0.1b, COCO or
            attribute-definition file, or malformed, or an image name points outside the image
            root; the message names the file, the row or JSON position, and the offending text.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as e:
        raise AnnotationError(f"{source}: cannot read the file ({e.strerror}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(
            f"{source}: byte {e.start} is not UTF-8. Re-save the file as UTF-8 (VIA itself writes "
            f"UTF-8). Received: {raw[max(e.start - 20, 0):e.start + 20]!r}") from None
    if not text.strip():
        raise AnnotationError(f"{source}: the file is empty. Export the annotations again.")
    parsed = _Parsed(source)
    if text.lstrip()[:1] in ("{", "["):
        _read_json(text, parsed)
    else:
        _read_csv(text, parsed)
    roots = [Path(image_root)] if image_root is not None else [source.parent, *parsed.extra_roots]
    return _build_frame(parsed, roots, allow_outside_root)


def resolve_image_path(filename: str, root: str | os.PathLike, allow_outside: bool = False) -> Path:
    """Turns a file name as VIA wrote it into a path under ``root``.

    Handles ``./``, subfolders, ``file://`` URLs, Windows separators and drive paths, and
    ``http(s)://`` URLs (their base name). When the file does not exist but one with the same base
    name lies directly under ``root``, that one is used. Otherwise the best candidate is returned
    even if it does not exist.

    Raises:
        AnnotationError: The name climbs out of ``root`` (``../x.jpg`` or an absolute path
            elsewhere) and ``allow_outside`` is false.
    """
    root = Path(os.path.abspath(root))
    name = filename.strip()
    if re.match(r"https?://", name, re.I):
        try:
            name = PurePosixPath(unquote(urlparse(name).path)).name
        except ValueError:  # e.g. an unclosed IPv6 host "http://[::1"
            name = PurePosixPath(name).name
    elif name.lower().startswith("file:"):
        name = unquote(re.sub(r"^file:(//(localhost)?)?", "", name, flags=re.I))
        name = re.sub(r"^/(?=[A-Za-z]:)", "", name)  # file:///C:/x -> C:/x
    name = name.replace("\\", "/")
    if re.match(r"[A-Za-z]:/|//", name):  # Windows drive or UNC path: only the base name is usable
        name = PurePosixPath(name).name
    candidate = Path(os.path.normpath(root / name))
    inside = candidate == root or root in candidate.parents
    fallback = root / PurePosixPath(name).name
    if _is_file(candidate) and (inside or allow_outside):
        return candidate
    if _is_file(fallback):
        return fallback
    if inside or allow_outside:
        return candidate
    raise AnnotationError(
        f"image file name {filename!r} points outside the image folder {root}. Move the image "
        f"under that folder, pass another image root, or allow paths outside the root. "
        f"Received: {_clip(filename)}")


class _Parsed:
    """What a reader found, before shapes and attributes are turned into columns."""

    def __init__(self, source: Path):
        self.source, self.format, self.undefined = source, "", 0
        self.images: dict[str, dict] = {}  # filename -> file attributes, in file order
        self.regions: list[tuple] = []  # (filename, region_id, shape, region attributes, location)
        self.options: dict[tuple[str, str], dict] = {}  # ("region"|"file", attr) -> {id: label}
        self.names = {"region": [], "file": []}  # attributes defined before any value is seen
        self.extra_roots: list[Path] = []  # a project's default_filepath

    def error(self, loc, problem: str, received=None) -> AnnotationError:
        text = f"{where(self.source, loc)}: {problem}"
        return AnnotationError(text if received is None else f"{text} Received: {_clip(received)}")

    def add(self, filename, region_id, shape, attrs, loc, region_count=None):
        """Records a region, or only the image when VIA wrote an empty placeholder."""
        if not isinstance(filename, str) or not filename.strip():
            raise self.error(loc, "the image file name is empty or not a string.", filename)
        for what, value in (("shape_attributes", shape), ("region_attributes", attrs)):
            if not isinstance(value, dict):
                raise self.error(loc, f"{what} must be a JSON object such as {{}}.", _dump(value))
        self.images.setdefault(filename, {})
        if not shape and (region_count == 0 or not any(_encode(v) for v in attrs.values())):
            return  # an image without regions
        self.regions.append((filename, region_id, shape, attrs, loc))


def _read_csv(text: str, parsed: _Parsed):
    """Reads a VIA 1.x/2.x CSV export (7 columns) or a flat CSV with label columns."""
    if _VIA3_CSV.search(text):
        raise parsed.error(None, _VIA3_HINT, text.lstrip().splitlines()[0])
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        records = [(reader.line_num, r) for r in reader if any(f.strip() for f in r)]
    except csv.Error as e:
        raise parsed.error(f"row {reader.line_num}", f"the CSV cannot be parsed ({e}).") from None
    if not records:
        raise parsed.error(None, "the file holds only commas and blanks; export it again.")
    header = _trim([f.strip() for f in records[0][1]], 0)
    header[0] = header[0].lstrip("#").strip()
    missing = [c for c in ("filename", "region_shape_attributes") if c not in header]
    if missing:
        raise parsed.error(f"row {records[0][0]}", f"missing column(s) {missing}; found {header}. "
                           "Export from VIA with 'Annotation > Export Annotations (as csv)'.",
                           ",".join(records[0][1]))
    parsed.format = "flat_csv" if tuple(header) != VIA_CSV_COLUMNS else (
        "via1_csv" if records[0][1][0].lstrip().startswith("#") else "via2_csv")
    labels = [c for c in header if c not in VIA_CSV_COLUMNS]  # flat CSV label columns
    parsed.names["region"] = list(labels)
    counters: dict[str, int] = {}
    for line, fields in records[1:]:
        loc = f"row {line}"
        fields = _trim(fields, len(header))
        if len(fields) != len(header):
            raise parsed.error(loc, f"expected {len(header)} fields, found {len(fields)}. A comma "
                               "or quote in a file name breaks VIA's CSV; rename the image.",
                               ",".join(fields))
        cells = dict(zip(header, fields))
        attrs = {c: cells[c] for c in labels} | _parse_cell(cells, "region_attributes", parsed, loc)
        filename = cells["filename"]
        if filename.strip() and filename not in parsed.images:
            parsed.images[filename] = _parse_cell(cells, "file_attributes", parsed, loc)
        counters[filename] = counters.get(filename, -1) + 1
        region_id = _int(cells.get("region_id", counters[filename]), parsed, loc, "region_id")
        count = _int(cells.get("region_count", -1), parsed, loc, "region_count")
        shape = _parse_cell(cells, "region_shape_attributes", parsed, loc)
        parsed.add(filename, region_id, shape, attrs, loc, count)


def _read_json(text: str, parsed: _Parsed):
    """Reads a VIA 1.x/2.x JSON export or a VIA 2.x project file."""
    data = _loads(text, parsed, None, "the JSON file")
    if not isinstance(data, dict):
        raise parsed.error(None, "expected a JSON object keyed by image (a VIA 2 JSON export) or a "
                           "VIA 2 project.", text.lstrip())
    if "project" in data and {"config", "attribute", "file", "metadata"} & data.keys():
        raise parsed.error(None, _VIA3_HINT, f"top-level keys {sorted(data)}")
    if {"images", "annotations"} <= data.keys():
        raise parsed.error(None, "this is a COCO file; export the VIA annotations as VIA CSV or "
                           "JSON instead.", f"top-level keys {sorted(data)}")
    if data and data.keys() <= {"region", "file"}:
        raise parsed.error(None, "this is a VIA attribute definition file, not annotations; pass "
                           "the annotation export or the project file.", text.lstrip())
    metadata = data
    if "_via_img_metadata" in data:
        parsed.format, metadata = "via2_project", data["_via_img_metadata"]
        _read_project_settings(data, parsed)
    if not isinstance(metadata, dict):
        raise parsed.error("_via_img_metadata", "expected an object keyed by image.",
                           _dump(metadata))
    for key, image in metadata.items():
        if not isinstance(image, dict) or "filename" not in image:
            raise parsed.error(f"image key {key!r}", "expected an object with 'filename', "
                               "'regions' and 'file_attributes' as VIA writes it.", _dump(image))
        filename, regions = image["filename"], image.get("regions", [])
        loc = f"image {filename!r}"
        if isinstance(regions, dict) or "fileref" in image or "base64_img_data" in image:
            parsed.format = parsed.format or "via1_json"
        if not isinstance(regions, (dict, list)):
            raise parsed.error(loc, "'regions' must be a list or an object.", _dump(regions))
        parsed.add(filename, 0, {}, {}, loc)
        file_attrs = image.get("file_attributes", {})
        if not isinstance(file_attrs, dict):
            raise parsed.error(loc, "'file_attributes' must be a JSON object.", _dump(file_attrs))
        parsed.images[filename] = parsed.images[filename] or file_attrs
        for i, region in enumerate(regions.values() if isinstance(regions, dict) else regions):
            rloc = f"{loc} region {i}"
            if not isinstance(region, dict):
                raise parsed.error(rloc, "a region must be an object with 'shape_attributes' and "
                                   "'region_attributes'.", _dump(region))
            parsed.add(filename, i, region.get("shape_attributes", {}),
                       region.get("region_attributes", {}), rloc)
    parsed.format = parsed.format or "via2_json"


def _read_project_settings(data: dict, parsed: _Parsed):
    """Takes option id -> label maps and the default image folder from a VIA 2 project."""
    definitions = data.get("_via_attributes")
    for kind in ("region", "file"):
        specs = definitions.get(kind) if isinstance(definitions, dict) else None
        for name, spec in specs.items() if isinstance(specs, dict) else ():
            parsed.names[kind].append(name)
            spec = spec if isinstance(spec, dict) else {}
            if spec.get("type") in _OPTION_TYPES and isinstance(spec.get("options"), dict):
                parsed.options[(kind, name)] = spec["options"]
    settings = data.get("_via_settings")
    core = settings.get("core") if isinstance(settings, dict) else None
    folder = core.get("default_filepath") if isinstance(core, dict) else None
    if isinstance(folder, str) and folder.strip() and "://" not in folder:
        folder = parsed.source.parent / folder.strip()
        if folder.is_dir():
            parsed.extra_roots.append(folder)


def _build_frame(parsed: _Parsed, roots: list[Path], allow_outside: bool) -> pd.DataFrame:
    """Turns the parsed regions into the output table, with boxes, paths and duplicate flags."""
    region_names = parsed.names["region"] + [n for r in parsed.regions for n in r[3]]
    file_names = parsed.names["file"] + [n for attrs in parsed.images.values() for n in attrs]
    taken = (*FIXED_COLUMNS, "duplicate")
    region_cols = {n: f"region:{n}" if n in taken else n for n in dict.fromkeys(region_names)}
    file_cols = {n: f"file:{n}" for n in dict.fromkeys(file_names)}
    paths, seen, rows = {}, set(), []
    for filename, region_id, shape, attrs, loc in parsed.regions:
        kind, x, y, w, h = _shape_box(shape, parsed, loc)
        if filename not in paths:
            paths[filename] = _resolve(filename, roots, allow_outside, parsed, loc)
        values = {region_cols[n]: _encode(v, parsed.options.get(("region", n)))
                  for n, v in attrs.items()}
        key = (filename, _dump(shape, sort_keys=True), tuple(sorted(values.items())))
        row = {"filename": filename, "path": paths[filename], "region_id": region_id,
               "shape": kind, "x": x, "y": y, "width": w, "height": h, "row": loc,
               "duplicate": key in seen, **dict.fromkeys(region_cols.values(), ""), **values}
        seen.add(key)
        for n, col in file_cols.items():
            row[col] = _encode(parsed.images[filename].get(n), parsed.options.get(("file", n)))
        rows.append(row)
    columns = [*FIXED_COLUMNS, "duplicate", *region_cols.values(), *file_cols.values()]
    frame = pd.DataFrame(rows, columns=columns)
    numeric = {"region_id": "int64", "duplicate": "bool", "x": "float64", "y": "float64",
               "width": "float64", "height": "float64"}
    frame = frame.astype({c: numeric.get(c, "str") for c in columns})
    with_regions = {r[0] for r in parsed.regions}
    frame.attrs.update(
        source=str(parsed.source), format=parsed.format, images=list(parsed.images),
        images_without_regions=sum(f not in with_regions for f in parsed.images),
        undefined_values=parsed.undefined, duplicate_regions=int(frame["duplicate"].sum()),
        region_attributes=list(region_cols.values()), file_attributes=list(file_cols.values()))
    return frame


def _resolve(filename: str, roots: list[Path], allow_outside: bool, parsed: _Parsed, loc) -> str:
    """Resolves against the first root, trying the others only while the image is not found."""
    try:
        path = resolve_image_path(filename, roots[0], allow_outside)
        for root in roots[1:]:
            alt = None if _is_file(path) else resolve_image_path(filename, root, allow_outside)
            path = alt if alt is not None and _is_file(alt) else path
    except AnnotationError as e:
        raise AnnotationError(f"{where(parsed.source, loc)}: {e}") from None
    return str(path)


def _shape_box(shape: dict, parsed: _Parsed, loc) -> tuple[str, float, float, float, float]:
    """Returns the shape name and its enclosing axis-aligned box ``x, y, width, height``."""
    if not shape:
        raise parsed.error(loc, "the region has attributes but no shape; draw it in VIA.", "{}")
    name = shape.get("name")
    if not isinstance(name, str) or name not in SHAPE_KEYS:
        raise parsed.error(loc, f"unknown shape name {name!r}; expected one of "
                           f"{', '.join(SHAPE_KEYS)}.", _dump(shape))
    missing = [k for k in SHAPE_KEYS[name] if k not in shape]
    if missing:
        raise parsed.error(loc, f"the {name} shape lacks {missing}; found {list(shape)}. Re-export "
                           "the file from VIA or fix the shape by hand.", _dump(shape))

    def num(key, value):
        number = None
        enormous = f"enormous (beyond +/-{MAX_COORDINATE:,} px, larger than any image)"
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                pass
            except OverflowError:  # an integer with hundreds of digits
                number = math.inf
        if number is None:
            kind = "not a number"
        elif key != "theta" and isinstance(value, int) and abs(value) > MAX_COORDINATE:
            kind = enormous
        elif not math.isfinite(number):
            kind = "not finite (NaN or infinity)"
        elif key != "theta" and abs(number) > MAX_COORDINATE:  # theta is an angle, in radians
            kind = enormous
        else:
            return number
        raise parsed.error(loc, f"coordinate {key!r} of the {name} shape is {kind}; fix it "
                           "in VIA or by hand.", f"{key}={value!r} in {_dump(shape)}")

    if name == "rect":
        x, y, w, h = (num(k, shape[k]) for k in SHAPE_KEYS[name])
        return name, min(x, x + w), min(y, y + h), abs(w), abs(h)
    if name == "point":
        return name, num("cx", shape["cx"]), num("cy", shape["cy"]), 0.0, 0.0
    if name in ("circle", "ellipse"):
        cx, cy, *radii = (num(k, shape[k]) for k in SHAPE_KEYS[name])
        rx, ry = abs(radii[0]), abs(radii[-1])
        theta = num("theta", shape["theta"]) if shape.get("theta") is not None else 0.0
        c, s = math.cos(theta), math.sin(theta)
        hx, hy = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)
        return name, cx - hx, cy - hy, 2 * hx, 2 * hy
    xs, ys = shape["all_points_x"], shape["all_points_y"]
    if not isinstance(xs, list) or not isinstance(ys, list) or not xs or len(xs) != len(ys):
        found = [len(v) if isinstance(v, list) else type(v).__name__ for v in (xs, ys)]
        raise parsed.error(loc, f"the {name}'s all_points_x and all_points_y must be non-empty "
                           f"lists of equal length; found {found[0]} and {found[1]}.", _dump(shape))
    xs = [num("all_points_x", v) for v in xs]
    ys = [num("all_points_y", v) for v in ys]
    return name, min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _parse_cell(cells: dict, column: str, parsed: _Parsed, loc) -> dict:
    """Parses a CSV cell holding a JSON object; an empty or absent cell is an empty object."""
    text = cells.get(column, "")
    if not text.strip():
        return {}
    if re.match(r'\s*"?name=', text):
        raise parsed.error(loc, f"{column} uses the VIA 0.1b 'name=...;x=...' syntax, which is not "
                           "supported. Open the file in VIA 2 and export it as CSV again.", text)
    value = _loads(text, parsed, loc, column)
    if not isinstance(value, dict):
        raise parsed.error(loc, f"{column} must be a JSON object such as {{}}.", text)
    return value


def _loads(text: str, parsed: _Parsed, loc, what: str):
    """``json.loads`` that tolerates VIA's bare ``undefined`` (counted) and trailing commas."""
    try:
        return _text_only(json.loads(text), parsed, loc, what)
    except (ValueError, RecursionError) as first:  # ValueError: also ints over 4,300 digits
        if isinstance(first, AnnotationError):
            raise
        fixed, count = _repair(text)
        try:
            value = _text_only(json.loads(fixed), parsed, loc, what)
        except AnnotationError:
            raise
        except (ValueError, RecursionError):
            hint = " It looks like Python: JSON needs double quotes." if "'" in text and (
                '"' not in text) else ""
            decode_error = isinstance(first, json.JSONDecodeError)
            pos = first.pos if decode_error else 0
            at = (f" at line {first.lineno} column {first.colno}" if decode_error else
                  " (nested too deeply)" if isinstance(first, RecursionError) else
                  " (a number has more than 4,300 digits)" if "digits" in str(first) else "")
            shown = text if len(text) <= 80 else text[max(pos - 40, 0):pos + 40]
            raise parsed.error(loc, f"{what} is not valid JSON{at}.{hint} Re-export it from VIA "
                               "or fix it by hand.", shown) from None
        parsed.undefined += count
        return value


def _text_only(value, parsed: _Parsed, loc, what: str):
    """Refuses strings no UTF-8 file can hold: unpaired surrogates, escaped as ``\\ud800``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise parsed.error(loc, f"{what} holds an unpaired UTF-16 surrogate escape "
                                   "(\\ud800-\\udfff), which is not text; fix that string.",
                                   ascii(item)) from None
    return value


def _repair(text: str) -> tuple[str, int]:
    """Replaces bare ``undefined`` with ``null`` and drops trailing commas, outside strings."""
    tokens = [m[0] for m in _REPAIR.finditer(text)]
    fixed = _REPAIR.sub(lambda m: "null" if m[0] == "undefined" else m[0] * (m[0][0] == '"'), text)
    return fixed, tokens.count("undefined")


def _encode(value, options: dict | None = None) -> str:
    """Encodes an attribute value as a stripped string; checkbox dicts become sorted ``a;b``."""
    if isinstance(value, dict):
        ticked = (_encode(k, options) for k, ok in value.items() if ok)
        return ";".join(sorted(t for t in ticked if t))
    if isinstance(value, list):
        return ";".join(t for t in (_encode(v, options) for v in value) if t)
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return str(options.get(text, text) if options else text).strip()


def _int(value, parsed: _Parsed, loc, column: str) -> int:
    """Parses an integer CSV cell such as ``region_id`` (VIA writes small counts)."""
    try:
        number = int(value)
    except ValueError:
        raise parsed.error(loc, f"{column} must be an integer.", value) from None
    if abs(number) >= 2**31:
        raise parsed.error(loc, f"{column} is far too large for a region count or index.", value)
    return number


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False for names the OS refuses (too long, say)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _trim(fields: list[str], width: int) -> list[str]:
    """Drops trailing empty fields beyond ``width`` (VIA 1.0.2 ends lines with a comma)."""
    while len(fields) > max(width, 1) and not fields[-1].strip():
        fields = fields[:-1]
    return fields


def _dump(value, sort_keys: bool = False) -> str:
    """Compact JSON, as VIA writes it, for messages and duplicate keys."""
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False)


def _clip(value, limit: int = 80) -> str:
    """Shortens offending text for an error message."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
