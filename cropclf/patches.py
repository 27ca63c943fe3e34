"""Decode each image once: every region's neighbourhood, kept in memory or memory-mapped on disk.

A `PatchStore` holds, per croppable region, a *patch*: the region's box grown by enough room for the
context margin and any augmentation jitter, cut from the image (padding what lies outside it) and
area-downscaled so that the margin box is no larger than the model's input. Every epoch and every
split crop from these patches with one `cv2.warpAffine`, so an image is decoded once per run, not
once per crop per epoch.

Memory is bounded: a patch is at most about ``(1 + 2 * room) / (1 + 2 * margin)`` times the output
size per side, and when the total passes ``memory_mb`` the patches live in a temporary memory-mapped
file instead of RAM.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cropclf.crops import cut_window, expand_box, integer_windows, resize
from cropclf.errors import ImageError
from cropclf.images import load_image, probe_image
from cropclf.progress import Progress


@dataclass(frozen=True)
class Problem:
    """Something that keeps a region out of training: where it is and why."""

    path: str
    row: str
    reason: str
    label: object = None  # the region's index label in the frame

    def __str__(self) -> str:
        return f"{self.path} ({self.row}): {self.reason}" if self.row else f"{self.path}: {self.reason}"


class PatchStore:
    """Region patches for a whole annotation frame, built by decoding each image once.

    Args:
        frame: regions from `read_annotations` (index labels identify regions).
        out_hw: the model's input ``(height, width)``.
        margin: context margin (fraction of the box per side).
        room: how far patches reach beyond the box, as a fraction of it (>= margin).
        mode: ``"stretch"`` or ``"letterbox"`` (letterbox scales both axes alike).
        min_size: boxes narrower or lower than this (pixels) cannot be cropped.
        pad_value: fill for pixels outside the image.
        memory_mb: above this many megabytes, patches go to a memory-mapped file.
        cache_dir: folder for that file (default: the system's temporary folder).
        threads: decoding threads (OpenCV releases the GIL while decoding).
        progress: show a progress bar while decoding.
    """

    def __init__(self, frame: pd.DataFrame, out_hw, margin: float, room: float, mode: str = "stretch",
                 min_size: float = 2.0, pad_value: int = 0, memory_mb: int = 2048, cache_dir=None,
                 threads: int = 1, progress: bool = True):
        self.out_hw, self.margin, self.mode, self.pad_value = tuple(out_hw), margin, mode, pad_value
        self.room = max(room, margin)
        self.problems: list[Problem] = []
        self.bad_images: dict[str, str] = {}
        self.slot = {}  # frame index label -> slot
        boxes = frame[["x", "y", "width", "height"]].to_numpy(np.float64)
        rows = frame["row"].astype(str).tolist() if "row" in frame else [""] * len(frame)
        paths = frame["path"].astype(str).tolist()

        # 1. Geometry and image headers: no pixel decoded yet.
        sizes = {}
        for path in dict.fromkeys(paths):
            try:
                sizes[path] = probe_image(path)
            except ImageError as e:
                self.bad_images[path] = str(e)
        keep = []
        for k, (label, box, path, row) in enumerate(zip(frame.index, boxes, paths, rows)):
            reason = self._why_not(box, sizes.get(path), min_size, path)
            if reason:
                self.problems.append(Problem(path, row, reason, label))
            else:
                keep.append(k)

        # 2. Patch layout: one flat uint8 buffer, offsets per slot.
        # windows: integer room windows in image pixels (x0, y0, x1, y1); margin_boxes: whole-pixel margin
        # windows (x, y, w, h), as canonical_crop cuts them; shapes: patch (h, w); scales: patch pixels
        # per image pixel (sx, sy)
        n = len(keep)
        oh, ow = self.out_hw
        kept = boxes[keep].reshape(-1, 4)
        margin_windows = integer_windows(expand_box(kept, margin))
        self.windows = integer_windows(expand_box(kept, self.room))
        self.margin_boxes = np.column_stack([margin_windows[:, :2], margin_windows[:, 2:] - margin_windows[:, :2]])
        mw, mh = self.margin_boxes[:, 2], self.margin_boxes[:, 3]
        if mode == "letterbox":
            sx = sy = np.minimum(1.0, np.minimum(ow / mw, oh / mh))
        else:  # shrink on both axes: area-average now, as `crops.resize` would; else keep full resolution
            both = (mw >= ow) & (mh >= oh)  # (the crop's warp then enlarges bilinearly, as resize does)
            sx, sy = np.where(both, ow / mw, 1.0), np.where(both, oh / mh, 1.0)
        ww, wh = self.windows[:, 2] - self.windows[:, 0], self.windows[:, 3] - self.windows[:, 1]
        self.shapes = np.column_stack([np.maximum(1, np.rint(wh * sy)),
                                       np.maximum(1, np.rint(ww * sx))]).astype(np.int64)
        self.scales = np.column_stack([self.shapes[:, 1] / ww, self.shapes[:, 0] / wh])
        self.slot = {frame.index[k]: s for s, k in enumerate(keep)}
        sizes_bytes = self.shapes[:, 0] * self.shapes[:, 1] * 3
        self.offsets = np.concatenate([[0], np.cumsum(sizes_bytes)]).astype(np.int64)
        self.nbytes = int(self.offsets[-1])
        self._tmp = None
        if self.nbytes > memory_mb * 2**20:
            self._tmp = tempfile.NamedTemporaryFile(prefix="cropclf-patches-", suffix=".u8", dir=cache_dir)
            self.buffer = np.memmap(self._tmp.name, dtype=np.uint8, mode="w+", shape=(self.nbytes,))
        else:
            self.buffer = np.empty(max(self.nbytes, 1), np.uint8)
        self.on_disk = self._tmp is not None

        # 3. Decode each image once and fill its regions' patches.
        by_image: dict[str, list[int]] = {}
        for s, k in enumerate(keep):
            by_image.setdefault(paths[k], []).append(s)
        self.valid = np.ones(n, bool)
        self._rows = [rows[k] for k in keep]
        self._labels = [frame.index[k] for k in keep]
        with Progress(len(by_image), "Decoding images", enabled=progress) as bar:
            def work(item):
                path, slots = item
                try:
                    self._fill(load_image(path, probed=True), slots)  # step 1 probed it
                    return None
                except ImageError as e:
                    return path, slots, str(e)
                finally:
                    bar.update()

            items = list(by_image.items())
            if threads > 1:
                with ThreadPoolExecutor(threads) as pool:
                    results = list(pool.map(work, items))
            else:
                results = [work(item) for item in items]
        for failed in filter(None, results):
            path, slots, message = failed
            self.bad_images[path] = message
            self.valid[slots] = False
            self.problems.extend(Problem(path, self._rows[s], "image unreadable", self._labels[s]) for s in slots)

    # --- building ---------------------------------------------------------------------------

    def _why_not(self, box, size, min_size, path) -> str | None:
        x, y, w, h = box
        if not np.all(np.isfinite(box)):
            return f"non-finite box {tuple(float(v) for v in box)}"
        if path in self.bad_images:
            return "image missing or unreadable"
        if w < min_size or h < min_size:
            return f"box {w:g}x{h:g} px is smaller than min_size={min_size:g} (point, line or degenerate shape)"
        height, width = size
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            return f"box ({x:g}, {y:g}, {w:g}, {h:g}) lies wholly outside the {width}x{height} image"
        if w > 10 * width or h > 10 * height:
            return (f"box {w:g}x{h:g} px is over 10 times as wide or tall as the {width}x{height} image; "
                    "check the coordinates (another image's, or a unit mix-up?)")
        return None

    def _fill(self, image: np.ndarray, slots) -> None:
        height, width = image.shape[:2]
        for s in slots:
            x0, y0, x1, y1 = self.windows[s]
            if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
                self.patch(s)[...] = resize(image[y0:y1, x0:x1], self.shapes[s])
            elif (x1 - x0) * (y1 - y0) <= 4 * height * width:  # pad, then resize: what serving does
                self.patch(s)[...] = resize(cut_window(image, (x0, y0, x1, y1), self.pad_value), self.shapes[s])
            else:  # a window many times the image: resize only the part inside, never allocate the rest
                self._fill_sparse(image, s)

    def _fill_sparse(self, image: np.ndarray, s: int) -> None:
        x0, y0, x1, y1 = self.windows[s]
        sx, sy = self.scales[s]
        patch = self.patch(s)
        patch[...] = self.pad_value
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, image.shape[1]), min(y1, image.shape[0])
        px0, py0 = round((ix0 - x0) * sx), round((iy0 - y0) * sy)
        px1, py1 = min(max(round((ix1 - x0) * sx), px0 + 1), patch.shape[1]), min(max(round((iy1 - y0) * sy), py0 + 1),
                                                                                   patch.shape[0])
        if px1 > px0 and py1 > py0:
            patch[py0:py1, px0:px1] = resize(image[iy0:iy1, ix0:ix1], (py1 - py0, px1 - px0))

    # --- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.shapes)

    def has(self, label) -> bool:
        s = self.slot.get(label)
        return s is not None and bool(self.valid[s])

    def patch(self, s: int) -> np.ndarray:
        h, w = self.shapes[s]
        return self.buffer[self.offsets[s]:self.offsets[s + 1]].reshape(h, w, 3)

    def to_patch(self, s: int, window) -> np.ndarray:
        """Converts an ``(x, y, w, h)`` window in image pixels to the slot's patch pixels."""
        x0, y0 = self.windows[s, :2]
        sx, sy = self.scales[s]
        x, y, w, h = window
        return np.array([(x - x0) * sx, (y - y0) * sy, w * sx, h * sy])

    def problems_for(self, labels) -> list[Problem]:
        """The problems of the regions with these frame index labels (for split-level reports)."""
        wanted = set(labels)
        return [p for p in self.problems if p.label in wanted]

    def close(self) -> None:
        if self._tmp is not None:
            del self.buffer
            self._tmp.close()
            self._tmp = None

    def describe(self) -> str:
        where = f"memory-mapped file ({self._tmp.name})" if self.on_disk else "memory"
        return (f"{len(self)} region patches, {self.nbytes / 2**20:.1f} MiB in {where}; "
                f"{len(self.problems)} region(s) left out, {len(self.bad_images)} bad image(s)")


def default_threads() -> int:
    """Threads for the decoding pass: one per CPU core (at most 8); OpenCV releases the GIL."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
