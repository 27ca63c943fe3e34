"""Reads VIA 1.x/2.x CSV exports (7 columns) and flat CSVs (``filename``, label columns, shapes)."""

from __future__ import annotations

import csv
import re

from cropclf.via.parsed import Parsed, loads
from cropclf.via.vocabulary import VIA_CSV_COLUMNS, csv_records, header_names, trim

_SMALL = re.compile(r"[0-9]{1,9}")  # an ASCII count far below 2**31
_VIA01_CELL = re.compile(r'\s*"?name=')
_VIA3_CSV = re.compile(r"^#\s*(SHAPE_ID|CSV_HEADER|FLAG_ID)\b|^metadata_id,file_list", re.M)
VIA3_HINT = ("This is a VIA 3 file, which this tool does not read. Open the images in VIA 2 and "
             "export with 'Annotation > Export Annotations' as a VIA 2 CSV/JSON.")


def read_csv(text: str, parsed: Parsed):
    """Reads a VIA 1.x/2.x CSV export (7 columns) or a flat CSV with label columns."""
    # the substring tests first: the pattern scans a whole VIA 2 file slowly and it needs one of them
    if ("#" in text or "metadata_id" in text) and _VIA3_CSV.search(text):
        raise parsed.error(None, VIA3_HINT, text.lstrip().splitlines()[0])
    try:
        records = csv_records(text)
    except csv.Error as e:
        raise parsed.error(f"row {e.line}", f"the CSV cannot be parsed ({e}).") from None
    if not records:
        raise parsed.error(None, "the file holds only commas and blanks; export it again.")
    header = header_names(records[0][1])
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
    for key, (line, fields) in enumerate(records[1:]):  # the writer counts records the same way
        loc = f"row {line}"
        if len(fields) > len(header):
            fields = trim(fields, len(header))
        if len(fields) != len(header):
            raise parsed.error(loc, f"expected {len(header)} fields, found {len(fields)}. A comma "
                               "or quote in a file name breaks VIA's CSV; rename the image.",
                               ",".join(fields))
        cells = dict(zip(header, fields))
        attrs = _parse_cell(cells, "region_attributes", parsed, loc)
        if labels:
            attrs = {c: cells[c] for c in labels} | attrs
        filename = cells["filename"]
        if filename.strip() and filename not in parsed.images:
            parsed.images[filename] = _parse_cell(cells, "file_attributes", parsed, loc)
        counters[filename] = counters.get(filename, -1) + 1
        region_id, count = cells.get("region_id", counters[filename]), cells.get("region_count", -1)
        # VIA writes small plain counts: int() at once, the checks only for anything else
        region_id = int(region_id) if type(region_id) is int or _SMALL.fullmatch(region_id) else _int(
            region_id, parsed, loc, "region_id")
        count = int(count) if type(count) is int or _SMALL.fullmatch(count) else _int(
            count, parsed, loc, "region_count")
        shape = _parse_cell(cells, "region_shape_attributes", parsed, loc)
        parsed.add(filename, region_id, shape, attrs, loc, key, count)


def _parse_cell(cells: dict, column: str, parsed: Parsed, loc) -> dict:
    """Parses a CSV cell holding a JSON object; an empty or absent cell is an empty object."""
    text = cells.get(column, "")
    if not text.strip():
        return {}
    if _VIA01_CELL.match(text):
        raise parsed.error(loc, f"{column} uses the VIA 0.1b 'name=...;x=...' syntax, which is not "
                           "supported. Open the file in VIA 2 and export it as CSV again.", text)
    value = loads(text, parsed, loc, column)
    if not isinstance(value, dict):
        raise parsed.error(loc, f"{column} must be a JSON object such as {{}}.", text)
    return value


def _int(value, parsed: Parsed, loc, column: str) -> int:
    """Parses an integer CSV cell such as ``region_id`` (VIA writes small counts)."""
    try:
        number = int(value)
    except ValueError:
        raise parsed.error(loc, f"{column} must be an integer.", value) from None
    if abs(number) >= 2**31:
        raise parsed.error(loc, f"{column} is far too large for a region count or index.", value)
    return number
