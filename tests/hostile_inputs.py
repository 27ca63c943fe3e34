"""Hostile inputs shared by the test_hostile_* files: region helpers, and one image file per kind of
good or bad image (conftest's ``images`` fixture draws them) with the error each must give."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
from fixtures_via import VIA_HEADER, csv_row

RECT = {"name": "rect", "x": 10, "y": 20, "width": 30, "height": 40}
CANARY = "__import__('pathlib').Path('CANARY').touch()"  # must never run
ODD_LABELS = ["zebra, striped", 'say "hi"', "猫 ねこ", "Ωμέγα"]


def one_region(shape=RECT, attrs=None, file_attrs=None, filename="x.jpg", region_id=0, count=1):
    """A VIA 2 CSV with one region; cells may be dicts or raw cell text."""
    return VIA_HEADER + "\n" + csv_row(filename, {} if file_attrs is None else file_attrs, count,
                                       region_id, shape, {"name": "a"} if attrs is None else attrs)


def rect(**values):
    return {**RECT, **values}


def raw_rect(field, text):
    """A rect shape cell whose ``field`` is the raw JSON ``text`` (NaN, 1e400, ...)."""
    pairs = [f'"{k}":{text if k == field else json.dumps(v)}' for k, v in RECT.items()]
    return "{" + ",".join(pairs) + "}"


def boxes(df):
    return [tuple(r) for r in df[["x", "y", "width", "height"]].itertuples(index=False)]



def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no pixel data."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def smooth(h, w, seed=0):
    """A smooth RGB image (JPEG keeps it nearly intact), with distinct corners."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * xx / w, 255 * yy / h, 128 + 0 * xx + seed], -1)
    return rgb.astype(np.uint8)


# name -> regex of the ImageError (from the header check, or only when decoding), or the
# (height, width) as displayed, with a check of the decoded pixels.
IMAGES = {
    "missing.jpg": r"missing\.jpg: image file not found; check --images",
    "empty.jpg": r"empty\.jpg: the image file is empty \(0 bytes\); replace or remove it",
    "truncated.jpg": r"truncated\.jpg: the JPEG is truncated \(no end-of-image marker\); "
                     r"re-export or re-download it\. Received: \d+ bytes",
    "text.jpg": r"text\.jpg: not a readable image .*Received: starts with b'this is a te'",
    "enormous.png": r"enormous\.png: the header claims 100000x100000 pixels, over the limit of "
                    r"200,000,000; raise CROPCLF_MAX_PIXELS",
    "x" * 300 + ".jpg": r"cannot look up this image file \(File name too long\)",
    "truncated.png": ("decoding", r"truncated\.png: OpenCV cannot decode this file; replace or "
                                  r"remove it\. Received: starts with b'\\x89PNG"),
    "good.png": (60, 90),
    "alpha.png": (60, 90),  # alpha dropped
    "gray.png": (60, 90),  # three equal channels
    "gray16.png": (60, 90),  # scaled to 8 bits
    "cmyk.jpg": (60, 90),  # converted to RGB
    "rotated.jpg": (90, 60),  # EXIF orientation applied, as VIA showed it
}


def image_error(name) -> str | None:
    """The regex of an image's error in `IMAGES`, or None for a good image."""
    expected = IMAGES.get(name)
    return expected if isinstance(expected, str) else (
        expected[1] if isinstance(expected, tuple) and isinstance(expected[0], str) else None)
