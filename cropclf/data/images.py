"""Reading images the way VIA showed them: EXIF orientation applied, always HxWx3 uint8 RGB.

OpenCV decodes (and applies EXIF orientation by default, as browsers do); Pillow reads only the
header, to learn an image's size and refuse decompression bombs without decoding anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cropclf.errors import ConfigError, ImageError


def _pixel_limit() -> int:
    """``CROPCLF_MAX_PIXELS`` (default 200 million, ~14k x 14k); cropclf/__init__.py lifts OpenCV's own to it."""
    text = os.environ.get("CROPCLF_MAX_PIXELS", "200000000").strip()
    if not text.isdigit() or int(text) == 0:
        raise ConfigError(f"CROPCLF_MAX_PIXELS must be a positive whole number of pixels. Received: {text!r}")
    return int(text)


MAX_PIXELS = _pixel_limit()
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def probe_image(path) -> tuple[int, int]:
    """Returns ``(height, width)`` of the image as displayed (EXIF applied), from its header only.

    Raises:
        ImageError: missing, empty, not an image, a truncated JPEG, or larger than ``MAX_PIXELS``.
    """
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            width, height = _stored_size(im)
            _check_pixels(path, height, width)  # before anything that could decode pixels
            orientation = _orientation(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: the header claims an enormous image; refusing to decode it. "
                         f"Raise CROPCLF_MAX_PIXELS if it is genuine. Received: header size too large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: not a readable image ({e}); replace or remove it. "
                         f"Received: {_first_bytes(path)}") from None
    _check_jpeg_end(path)
    return (width, height) if orientation in _ROTATED else (height, width)


def load_image(path, probed: bool = False) -> np.ndarray:
    """Decodes an image to HxWx3 uint8 RGB, EXIF orientation applied.

    Grayscale becomes 3 equal channels, alpha is dropped, 16-bit is scaled to 8-bit, CMYK is
    converted. A truncated JPEG is an error rather than a half-grey picture.

    Args:
        path: the image file.
        probed: `probe_image` has already accepted this file (saves reading its header twice).

    Raises:
        ImageError: naming the path and what is wrong with it.
    """
    path = Path(path)
    if not probed:
        probe_image(path)  # cheap header check first: refuses bombs and truncated JPEGs before decoding
    try:
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    except cv2.error as e:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e):  # cv2 was imported before cropclf raised OpenCV's limit
            raise ImageError(f"{path}: OpenCV's own pixel limit refused this image, which CROPCLF_MAX_PIXELS="
                             f"{MAX_PIXELS:,} allows. OpenCV reads its limit once, when cv2 is first imported: "
                             f"set OPENCV_IO_MAX_IMAGE_PIXELS={MAX_PIXELS} before starting Python, or import "
                             f"cropclf before cv2. Received: {_first_bytes(path)}") from None
        raise ImageError(f"{path}: cannot decode this file ({_cv2_reason(e)}); replace or remove it. "
                         f"Received: {_first_bytes(path)}") from None
    except OSError as e:
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[-1][:120]
        raise ImageError(f"{path}: cannot decode this file ({reason}); replace or remove it. "
                         f"Received: {_first_bytes(path)}") from None
    if image is None:
        raise ImageError(f"{path}: OpenCV cannot decode this file; replace or remove it. "
                         f"Received: {_first_bytes(path)}")
    return image


def _cv2_reason(e: cv2.error) -> str:
    return str(e).strip().splitlines()[-1][:120]


def _stored_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as stored, before EXIF orientation (Pillow already swaps TIFF's)."""
    if im.format == "TIFF":
        return im.tag_v2.get(256, im.size[0]), im.tag_v2.get(257, im.size[1])
    return im.size


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag, read without decoding pixels (1 when absent)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # Pillow would decode the whole PNG looking for a late eXIf chunk
    if im.format not in ("JPEG", "MPO", "TIFF", "PNG", "WEBP"):  # MPO: many phones' JPEGs
        return 1
    return im.getexif().get(0x0112, 1)


def _check_jpeg_end(path: Path) -> None:
    """A JPEG must end with its end-of-image marker (allowing trailing padding)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - 2, 0))
        if f.read(2) == b"\xff\xd9":  # nearly every JPEG: its last two bytes
            return
        f.seek(max(size - 65536, 0))
        if b"\xff\xd9" not in f.read():
            raise ImageError(f"{path}: the JPEG is truncated (no end-of-image marker); "
                             f"re-export or re-download it. Received: {size} bytes")


def _check_file(path: Path) -> None:
    try:
        found = path.is_file()
    except OSError as e:  # a name the OS refuses, e.g. too long
        raise ImageError(f"{path}: cannot look up this image file ({e.strerror}); fix the file "
                         f"name in the annotations. Received: {str(path)[:120]}") from None
    if not found:
        hint = "check --images (the folder filenames resolve against)"
        raise ImageError(f"{path}: image file not found; {hint}. Received: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the image file is empty (0 bytes); replace or remove it. Received: 0 bytes")


def _check_pixels(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise ImageError(f"{path}: the header claims {width}x{height} pixels, over the limit of "
                         f"{MAX_PIXELS:,}; raise CROPCLF_MAX_PIXELS if it is genuine. Received: {width}x{height}")


def _first_bytes(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f"starts with {f.read(12)!r}"
    except OSError as e:
        return f"cannot be opened ({e.strerror})"


Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with a message that says what to do
