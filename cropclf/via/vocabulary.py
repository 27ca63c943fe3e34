"""VIA's vocabulary, shared by the reader, the writer and the demo: columns, option types, cell quoting,
the repair of VIA's bare ``undefined``, attribute values as strings, and the region key.

Only the standard library: a VIA quirk that both reading and writing must know lives here, once.
"""

from __future__ import annotations

import csv
import io
import json
import re

# The columns of VIA 1.x/2.x CSV exports, in VIA's order.
VIA_CSV_COLUMNS = ("filename", "file_size", "file_attributes", "region_count", "region_id",
                   "region_shape_attributes", "region_attributes")
OPTION_TYPES = ("radio", "dropdown", "image", "checkbox")  # attribute types whose values are option ids
# Frame column: the region's position in the file, so the writer finds it again without renumbering:
# in a CSV the data record's position (non-blank records after the header, from 0), in JSON the
# region object's position over all images in file order (placeholders without a shape counted too).
REGION_KEY = "region_key"
# A JSON string (skipped as a whole), a bare `undefined` outside strings, or a trailing comma.
_REPAIR = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|\bundefined\b|,(?=\s*[}\]])', re.S)


def repair(text: str) -> tuple[str, int]:
    """Replaces bare ``undefined`` with ``null`` and drops trailing commas, outside strings.

    Returns the fixed text and how many ``undefined`` it replaced.
    """
    tokens = [m[0] for m in _REPAIR.finditer(text)]
    fixed = _REPAIR.sub(lambda m: "null" if m[0] == "undefined" else m[0] * (m[0][0] == '"'), text)
    return fixed, tokens.count("undefined")


def csv_records(text: str) -> list[tuple[int, list[str]]]:
    """The non-blank records of a CSV text as ``(line number, fields)``, as VIA's readers see them.

    Raises ``csv.Error`` for text the csv module cannot parse, its ``line`` the line it reached.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        # "".join(r).strip(): non-blank iff some field is, in one call (a million records notice)
        return [(reader.line_num, r) for r in reader if "".join(r).strip()]
    except csv.Error as e:
        e.line = reader.line_num
        raise


def trim(fields: list[str], width: int) -> list[str]:
    """Drops trailing empty fields beyond ``width`` (VIA 1.0.2 ends lines with a comma)."""
    while len(fields) > max(width, 1) and not fields[-1].strip():
        fields = fields[:-1]
    return fields


def header_names(fields: list[str]) -> list[str]:
    """A CSV header's column names: trailing empty fields dropped, stripped, VIA 1's ``#`` removed."""
    names = [f.strip() for f in trim(fields, 0)]
    names[0] = names[0].lstrip("#").strip()
    return names


def encode(value, options: dict | None = None) -> str:
    """Encodes an attribute value as a stripped string; checkbox dicts become sorted ``a;b``.

    ``options``: option id -> label, from a VIA 2 project (ids are shown as their labels).
    """
    if type(value) is str and not options:  # the common case, first (a million regions call this)
        return value.strip()
    if isinstance(value, dict):
        ticked = (encode(k, options) for k, ok in value.items() if ok)
        return ";".join(sorted(t for t in ticked if t))
    if isinstance(value, list):
        return ";".join(t for t in (encode(v, options) for v in value) if t)
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return str(options.get(text, text) if options else text).strip()


def dump(value, sort_keys: bool = False) -> str:
    """Compact JSON, as VIA writes it (cells, messages, duplicate keys)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys, ensure_ascii=False)


def quote_json_cell(cell: str) -> str:
    """A JSON cell as VIA's CSV writes it: always quoted, quotes doubled, empty as ``{}``."""
    return '"' + (cell.strip() or "{}").replace('"', '""') + '"'


def quote_filename(filename: str) -> str:
    """VIA writes file names unquoted; quote only what would otherwise break the row."""
    return '"' + filename.replace('"', '""') + '"' if re.search(r'[,"\r\n]', filename) else filename


def clip(value, limit: int = 80) -> str:
    """Shortens offending text for an error message."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
