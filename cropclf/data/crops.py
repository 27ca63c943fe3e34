"""Crop geometry in pure numpy: margins, windows, and the affine map from output pixels to source.

Boxes are ``(x, y, width, height)`` in VIA's continuous pixel frame: the box ``x=10, width=20``
covers pixels 10..29, i.e. ``[10, 30)``; pixel ``j``'s centre is at ``j + 0.5``. Nothing here
imports keras or albumentations; the exported SavedModel reimplements `canonical_crop` in
TensorFlow and the tests hold the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# A box over this many times as wide or tall as its image is mostly padding, and cutting it out could
# take gigabytes; it is far more likely another image's coordinates or a unit mix-up.
MAX_BOX_SCALE = 10


@dataclass(frozen=True)
class Problem:
    """A region (or an image, or the whole file) left out or worth a look: where it is and why.

    The one record for every region training, evaluation, prediction or inspection leaves out.
    """

    file: str  # the image's path (training, prediction) or file name as annotated (inspection)
    row: str  # "row 7" (CSV), "image 'a.jpg' region 2" (JSON), "" (the whole file)
    reason: str
    kind: str = ""  # why_not_croppable's kinds, or inspection's (`inspection.KINDS`)
    label: object = None  # the region's index label in its frame

    def __str__(self) -> str:
        return f"{self.file} ({self.row}): {self.reason}" if self.row else f"{self.file}: {self.reason}"


def why_not_croppable(box, image_hw, min_size: float) -> tuple[str, str] | None:
    """Why a VIA box ``(x, y, w, h)`` cannot be cropped from an ``image_hw`` image, or None when it can.

    The one rule by which training (`PatchStore`), prediction and inspection leave regions out.
    Returns ``(kind, reason)``; kinds, checked in this order: ``non_finite``, ``zero_area`` and
    ``too_small`` (narrower or lower than ``min_size`` px), ``outside_image`` (no pixel inside),
    ``oversized`` (over `MAX_BOX_SCALE` times the image's width or height). ``image_hw`` None (the
    image is unknown) checks only the box itself.
    """
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "non_finite", f"non-finite box {(x, y, w, h)}"
    if w < min_size or h < min_size:
        kind, what = ("zero_area", "point or line") if w == 0 or h == 0 else ("too_small", "too thin")
        return kind, f"box {w:g}x{h:g} px is smaller than min_size={min_size:g} ({what})"
    if image_hw is None:
        return None
    height, width = image_hw
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "outside_image", f"box ({x:g}, {y:g}, {w:g}, {h:g}) lies wholly outside the {width}x{height} image"
    if w > MAX_BOX_SCALE * width or h > MAX_BOX_SCALE * height:
        return "oversized", (f"box ({x:g}, {y:g}, {w:g}, {h:g}) is over {MAX_BOX_SCALE:g} times as wide or tall "
                             f"as the {width}x{height} image; check the coordinates (another image's, or a unit "
                             "mix-up?)")
    return None


def expand_box(box, margin: float) -> np.ndarray:
    """Grows ``(x, y, w, h)`` boxes by ``margin`` times their width/height on each side."""
    box = np.asarray(box, dtype=np.float64)
    x, y, w, h = np.moveaxis(box, -1, 0)
    return np.stack([x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)], axis=-1)


def integer_window(box) -> tuple[int, int, int, int]:
    """Returns the whole-pixel window ``(x0, y0, x1, y1)`` covering a box, at least 1x1."""
    x0, y0, x1, y1 = integer_windows(box)[0]
    return int(x0), int(y0), int(x1), int(y1)


def integer_windows(boxes) -> np.ndarray:
    """`integer_window` for an ``[N, 4]`` array of boxes: ``[N, 4]`` int64 ``(x0, y0, x1, y1)``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0 = np.floor(boxes[:, 0]), np.floor(boxes[:, 1])
    x1 = np.maximum(np.ceil(boxes[:, 0] + boxes[:, 2]), x0 + 1)
    y1 = np.maximum(np.ceil(boxes[:, 1] + boxes[:, 3]), y0 + 1)
    return np.column_stack([x0, y0, x1, y1]).astype(np.int64)


def cut_window(image: np.ndarray, window, pad_value: int = 0) -> np.ndarray:
    """Cuts ``image[y0:y1, x0:x1]``, padding with ``pad_value`` wherever the window leaves the image."""
    x0, y0, x1, y1 = window
    height, width = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0, image.shape[2]), pad_value, dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def fit_size(src_hw, out_hw, mode: str) -> tuple[int, int]:
    """The size ``(h, w)`` a ``src_hw`` window is resized to inside ``out_hw`` for a resize ``mode``."""
    (sh, sw), (oh, ow) = src_hw, out_hw
    if mode == "stretch":
        return oh, ow
    scale = min(oh / sh, ow / sw)
    return max(1, min(oh, round(sh * scale))), max(1, min(ow, round(sw * scale)))


def letterbox(resized: np.ndarray, out_hw, pad_value: int = 0) -> np.ndarray:
    """Centres ``resized`` on an ``out_hw`` canvas filled with ``pad_value``."""
    oh, ow = out_hw
    h, w = resized.shape[:2]
    if (h, w) == (oh, ow):
        return resized
    out = np.full((oh, ow, resized.shape[2]), pad_value, dtype=resized.dtype)
    top, left = (oh - h) // 2, (ow - w) // 2
    out[top:top + h, left:left + w] = resized
    return out


def canonical_crop(image: np.ndarray, box, out_hw, margin: float, mode: str = "stretch",
                   pad_value: int = 0) -> np.ndarray:
    """The reference crop that evaluation and serving share.

    The box grows by ``margin``, snaps to whole pixels, is cut (padding outside the image), then
    area-resized to ``out_hw`` (stretched, or letterboxed to keep its aspect ratio).
    """
    window = integer_window(expand_box(box, margin))
    cut = cut_window(image, window, pad_value)
    h, w = fit_size(cut.shape[:2], out_hw, mode)
    return letterbox(resize(cut, (h, w)), out_hw, pad_value)


def resize(image: np.ndarray, out_hw) -> np.ndarray:
    """Area averaging when shrinking on both axes, bilinear otherwise (the SavedModel does the same)."""
    (h, w), (sh, sw) = out_hw, image.shape[:2]
    if (h, w) == (sh, sw):
        return image
    shrink = h <= sh and w <= sw
    out = cv2.resize(image, (int(w), int(h)), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out[..., None] if out.ndim == 2 else out


def output_to_source(window, out_hw) -> np.ndarray:
    """The 2x3 affine matrix taking output pixel indices to source pixel indices.

    ``window`` is ``(x, y, w, h)`` in source pixel units (floats allowed); its corners map to the
    output's corners (letterboxing is done after, by `letterbox`, on the resized crop). Use with
    ``cv2.warpAffine(..., flags=... | cv2.WARP_INVERSE_MAP)``.
    """
    x, y, w, h = (float(v) for v in window)
    oh, ow = out_hw
    sx, sy = w / ow, h / oh
    # output pixel centre (j + 0.5) -> source x + (j + 0.5) * sx -> source index minus 0.5
    return np.array([[sx, 0.0, x + 0.5 * sx - 0.5],
                     [0.0, sy, y + 0.5 * sy - 0.5]], dtype=np.float64)


def box_in_crop(box, out_hw, margin: float, mode: str = "stretch") -> tuple[float, float, float, float]:
    """Where the annotated ``box`` lands in its `canonical_crop`: ``(x0, y0, x1, y1)`` in output pixels
    (continuous: pixel ``j`` spans ``[j, j + 1)``), for drawing the box on the crop."""
    x0, y0, x1, y1 = integer_window(expand_box(box, margin))
    h, w = fit_size((y1 - y0, x1 - x0), out_hw, mode)
    top, left = (out_hw[0] - h) // 2, (out_hw[1] - w) // 2  # as `letterbox` centres the resized window
    sx, sy = w / (x1 - x0), h / (y1 - y0)
    x, y, bw, bh = (float(v) for v in box)
    return left + (x - x0) * sx, top + (y - y0) * sy, left + (x + bw - x0) * sx, top + (y + bh - y0) * sy


def jitter_window(window, rng: np.random.Generator, shift: float, scale: float) -> np.ndarray:
    """Moves a window's centre by up to ``shift`` of its size and rescales it by up to ``scale``."""
    x, y, w, h = (float(v) for v in window)
    dx, dy = rng.uniform(-shift, shift, 2)
    s = np.exp(rng.uniform(np.log1p(-scale), np.log1p(scale))) if scale > 0 else 1.0
    cx, cy = x + w / 2 + dx * w, y + h / 2 + dy * h
    return np.array([cx - w * s / 2, cy - h * s / 2, w * s, h * s])


def jitter_reach(shift: float, scale: float) -> float:
    """How far `jitter_window` can move a window's edge beyond it, as a fraction of its size.

    The centre moves by up to ``shift`` of the size and the size grows by up to ``scale``, half of
    which goes to each side: an edge moves out by at most ``shift + scale / 2`` of the size.
    """
    return shift + scale / 2


def keep_border(jittered, window, image_hw) -> np.ndarray:
    """Moves a `jitter_window` result so that the image border shows in it where it shows in ``window``.

    Box jitter stands for an annotator's imprecise box, but the image border is no annotation: it is
    where the picture ends, exactly, and a box cut by it (VOC's "truncated") ends on it. Unpinned, a
    jittered crop shows a padding band of another width than the served crop does, or none, or one where
    the served crop has none, which is noise for any label tied to the border. Per axis: where ``window``
    crosses one image edge, the jittered window keeps the same fraction of itself beyond that edge; where
    it crosses neither, the jittered window is moved back inside the image (centred on ``window`` when it
    is larger than the image); where it crosses both, that axis is not jittered. Sizes are kept, so the
    result moves no edge further from ``window`` than the jitter did, up to the scale change.
    """
    out = np.array(jittered, np.float64)
    for axis, size in ((0, image_hw[1]), (1, image_hw[0])):
        a, length = float(window[axis]), float(window[axis + 2])
        j, n = out[axis], out[axis + 2]
        low, high = a < 0, a + length > size
        if low and high:
            out[axis], out[axis + 2] = a, length
        elif low:
            out[axis] = a / length * n  # the same fraction -a / length of it left of (or above) 0
        elif high:
            out[axis] = size - n * (size - a) / length  # the same fraction inside [.., size)
        elif n > size:
            out[axis] = a + (length - n) / 2
        else:
            out[axis] = min(max(j, 0.0), size - n)
    return out
