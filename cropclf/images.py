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

from cropclf.errors import ImageError

MAX_PIXELS = int(os.environ.get("CROPCLF_MAX_PIXELS", 200_000_000))  # ~14k x 14k
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def probe_image(path) -> tuple[int, int]:
    """Returns ``(height, width)`` of the image as displayed (EXIF applied), from its header only.

    Raises:
        ImageError: missing, empty, not an image, or larger than ``MAX_PIXELS``.
    """
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1) if im.format in ("JPEG", "TIFF", "PNG", "WEBP") else 1
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: the header claims an enormous image; refusing to decode it. "
                         f"Raise CROPCLF_MAX_PIXELS if it is genuine. Received: header size too large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: not a readable image ({e}); replace or remove it. "
                         f"Received: {_first_bytes(path)}") from None
    _check_pixels(path, height, width)
    return (width, height) if orientation in _ROTATED else (height, width)


def load_image(path, probed: bool = False) -> np.ndarray:
    """Decodes an image to HxWx3 uint8 RGB, EXIF orientation applied.

    Grayscale becomes 3 equal channels, alpha is dropped, 16-bit is scaled to 8-bit, CMYK is
    converted. A truncated JPEG is an error rather than a half-grey picture.

    Args:
        path: the image file.
        probed: `probe_image` already accepted this file (skips a second header read).

    Raises:
        ImageError: naming the path and what is wrong with it.
    """
    path = Path(path)
    if not probed:
        probe_image(path)  # cheap header check first: refuses bombs before any pixel is allocated
    data = np.fromfile(path, dtype=np.uint8)
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-65536:].tobytes():
        raise ImageError(f"{path}: the JPEG is truncated (no end-of-image marker); "
                         f"re-export or re-download it. Received: {data.size} bytes")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ImageError(f"{path}: OpenCV cannot decode this file; replace or remove it. "
                         f"Received: {_first_bytes(path)}")
    return image


def _check_file(path: Path) -> None:
    if not path.is_file():
        hint = "check --images (the folder filenames resolve against)"
        raise ImageError(f"{path}: image file not found; {hint}. Received: {path}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the image file is empty (0 bytes); replace or remove it. Received: 0 bytes")


def _check_pixels(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise ImageError(f"{path}: the header claims {width}x{height} pixels, over the limit of "
                         f"{MAX_PIXELS:,}; raise CROPCLF_MAX_PIXELS if it is genuine. Received: {width}x{height}")


def _first_bytes(path: Path) -> str:
    with open(path, "rb") as f:
        return f"starts with {f.read(12)!r}"


Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with a message that says what to do
