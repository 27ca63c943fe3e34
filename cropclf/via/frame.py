"""Reads VIA 1.x/2.x annotation exports (CSV, JSON, project) into one table with a row per region.

The variant is detected from the content, never from the file name (`csv_reader`, `json_reader`).
Shapes become their enclosing, unclipped axis-aligned box in image pixels (`shapes`); region and
file attributes become string columns; file names become paths under the image root.
Only the standard library and pandas: no framework is imported here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import pandas as pd

from cropclf.errors import AnnotationError, where
from cropclf.via.csv_reader import read_csv
from cropclf.via.json_reader import read_json
from cropclf.via.parsed import Parsed
from cropclf.via.shapes import shape_box
from cropclf.via.vocabulary import REGION_KEY, clip, dump, encode

FIXED_COLUMNS = ("filename", "path", "region_id", "shape", "x", "y", "width", "height", "row", REGION_KEY)


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
        Columns ``filename, path, region_id, shape, x, y, width, height, row, region_key, duplicate``
        (``region_key``: the region's position in the file, see `vocabulary.REGION_KEY`), then
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
    parsed = Parsed(source)
    if text.lstrip()[:1] in ("{", "["):
        read_json(text, parsed)
    else:
        read_csv(text, parsed)
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
        f"Received: {clip(filename)}")


def _build_frame(parsed: Parsed, roots: list[Path], allow_outside: bool) -> pd.DataFrame:
    """Turns the parsed regions into the output table, with boxes, paths and duplicate flags."""
    region_names = parsed.names["region"] + [n for r in parsed.regions for n in r[3]]
    file_names = parsed.names["file"] + [n for attrs in parsed.images.values() for n in attrs]
    taken = (*FIXED_COLUMNS, "duplicate")
    region_cols = {n: f"region:{n}" if n in taken else n for n in dict.fromkeys(region_names)}
    file_cols = {n: f"file:{n}" for n in dict.fromkeys(file_names)}
    columns = [*FIXED_COLUMNS, "duplicate", *region_cols.values(), *file_cols.values()]
    # one tuple per region, turned into columns at the end: a dict per region would take gigabytes
    # at a million regions, and appending to a dozen lists per region costs more than one transpose
    labelled = list(dict.fromkeys([*region_cols.values(), *file_cols.values()]))
    fixed, cells = [], []
    paths, seen = {}, set()
    for filename, region_id, shape, attrs, loc, region_key in parsed.regions:
        kind, x, y, w, h = shape_box(shape, parsed.error, loc)
        if filename not in paths:
            paths[filename] = _resolve(filename, roots, allow_outside, parsed, loc)
        values = {region_cols[n]: encode(v, parsed.options.get(("region", n)))
                  for n, v in attrs.items()}
        key = (filename, _shape_key(shape), tuple(sorted(values.items())))
        fixed.append((filename, paths[filename], region_id, kind, x, y, w, h, loc, region_key, key in seen))
        seen.add(key)
        for n, col in file_cols.items():  # after the region values: as in a row dict, a file column wins
            values[col] = encode(parsed.images[filename].get(n), parsed.options.get(("file", n)))
        cells.append(tuple([values.get(col, "") for col in labelled]))
    names = [*FIXED_COLUMNS, "duplicate", *labelled]
    table = dict(zip(names, [list(c) for c in zip(*fixed)] + [list(c) for c in zip(*cells)])) if fixed else {}
    table = {c: table.get(c, []) for c in names}
    del fixed, cells
    frame = pd.DataFrame(table, columns=columns)
    numeric = {"region_id": "int64", REGION_KEY: "int64", "duplicate": "bool", "x": "float64", "y": "float64",
               "width": "float64", "height": "float64"}
    frame = frame.astype({c: numeric.get(c, "str") for c in columns})
    with_regions = {r[0] for r in parsed.regions}
    frame.attrs.update(
        source=str(parsed.source), format=parsed.format, images=list(parsed.images),
        images_without_regions=sum(f not in with_regions for f in parsed.images),
        undefined_values=parsed.undefined, duplicate_regions=int(frame["duplicate"].sum()),
        region_attributes=list(region_cols.values()), file_attributes=list(file_cols.values()))
    return frame


def _shape_key(shape: dict):
    """What makes two shapes the same for duplicate detection: their JSON text with sorted keys.

    Shapes holding only integers and strings compare as their sorted items instead (the same
    equality, without serialising a million shapes): the JSON text tells int, float, bool and str
    apart, so two shapes of the same text are both of this kind or both not.
    """
    items = sorted(shape.items())
    for _, v in items:
        if type(v) is not int and type(v) is not str:
            return dump(shape, sort_keys=True)
    return tuple(items)


def _resolve(filename: str, roots: list[Path], allow_outside: bool, parsed: Parsed, loc) -> str:
    """Resolves against the first root, trying the others only while the image is not found."""
    try:
        path = resolve_image_path(filename, roots[0], allow_outside)
        for root in roots[1:]:
            alt = None if _is_file(path) else resolve_image_path(filename, root, allow_outside)
            path = alt if alt is not None and _is_file(alt) else path
    except AnnotationError as e:
        raise AnnotationError(f"{where(parsed.source, loc)}: {e}") from None
    return str(path)


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False for names the OS refuses (too long, say)."""
    try:
        return path.is_file()
    except OSError:
        return False
