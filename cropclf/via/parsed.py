"""What a VIA reader found, before shapes and attributes become columns; VIA-tolerant JSON parsing."""

from __future__ import annotations

import json
import json.scanner
from pathlib import Path

from cropclf.errors import AnnotationError, where
from cropclf.via.vocabulary import clip, dump, encode, repair


class Parsed:
    """What a reader found, before shapes and attributes are turned into columns."""

    def __init__(self, source: Path):
        self.source, self.format, self.undefined = source, "", 0
        self.images: dict[str, dict] = {}  # filename -> file attributes, in file order
        self.regions: list[tuple] = []  # (filename, region_id, shape, region attributes, location, key)
        self.options: dict[tuple[str, str], dict] = {}  # ("region"|"file", attr) -> {id: label}
        self.names = {"region": [], "file": []}  # attributes defined before any value is seen
        self.extra_roots: list[Path] = []  # a project's default_filepath

    def error(self, loc, problem: str, received=None) -> AnnotationError:
        text = f"{where(self.source, loc)}: {problem}"
        return AnnotationError(text if received is None else f"{text} Received: {clip(received)}")

    def add(self, filename, region_id, shape, attrs, loc, key, region_count=None):
        """Records a region, or only the image when VIA wrote an empty placeholder.

        ``key``: the region's position in the file (see `vocabulary.REGION_KEY`).
        """
        if not isinstance(filename, str) or not filename.strip():
            raise self.error(loc, "the image file name is empty or not a string.", filename)
        for what, value in (("shape_attributes", shape), ("region_attributes", attrs)):
            if not isinstance(value, dict):
                raise self.error(loc, f"{what} must be a JSON object such as {{}}.", dump(value))
        self.images.setdefault(filename, {})
        if not shape and (region_count == 0 or not any(encode(v) for v in attrs.values())):
            return  # an image without regions
        self.regions.append((filename, region_id, shape, attrs, loc, key))


_decode = json.JSONDecoder().decode
_scan = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner alone: called once per CSV cell


def _decode_fast(text: str):
    """``json.loads(text)``, skipping its Python wrapper when the text is one value and nothing else;
    anything else (whitespace around it, extra data, an error) goes through ``json.loads``' own path."""
    if text and text[0] in "{[":
        try:
            value, end = _scan(text, 0)
        except StopIteration:
            return _decode(text)
        if end == len(text):
            return value
    return _decode(text)


def loads(text: str, parsed: Parsed, loc, what: str):
    """``json.loads`` that tolerates VIA's bare ``undefined`` (counted) and trailing commas."""
    try:
        return _text_only(_decode_fast(text), parsed, loc, what, text)
    except (ValueError, RecursionError) as first:  # ValueError: also ints over 4,300 digits
        if isinstance(first, AnnotationError):
            raise
        fixed, count = repair(text)
        try:
            value = _text_only(_decode(fixed), parsed, loc, what, fixed)
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


def _text_only(value, parsed: Parsed, loc, what: str, text: str):
    """Refuses strings no UTF-8 file can hold: unpaired surrogates, escaped as ``\\ud800``.

    ``text`` was decoded from UTF-8, so a surrogate can only come from a backslash escape: without a
    backslash there is nothing to look for (the walk would cost more than the parse).
    """
    if "\\" not in text:
        return value
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
