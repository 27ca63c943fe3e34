"""Decode each image once: every region's neighbourhood, kept in memory (up to a cap) or in a file on disk.

A `PatchStore` holds, per croppable region, a *patch*: the region's whole-pixel margin window (the
window `crops.canonical_crop` cuts), plus room for the augmentation jitter, resampled onto the pixel
grid of the canonical crop. Every epoch and every split crop from these patches, so an image is
decoded once per run, not once per crop per epoch.

The patch grid, per axis and per region (``L``: the margin window's length in image pixels, ``T``:
the length `canonical_crop` resizes it to, see `crops.fit_size`):

* ``L > T`` (the crop shrinks that axis): one patch pixel per canonical output pixel, pitch
  ``q = L / T`` image pixels, computed as `crops.resize` does (area averages when both axes shrink,
  linear samples otherwise); the margin window is exactly ``T`` patch pixels.
* ``L <= T``: full resolution, pitch 1; the margin window is exactly ``L`` patch pixels.
* the jitter room: ``ceil(reach * L / q)`` patch pixels on each side, the most a jittered window
  reaches beyond the margin window (`crops.jitter_reach`), so jitter takes context from real pixels.

So a non-jittered crop is a whole-pixel sub-window of the patch, resized as `canonical_crop` resizes
(identity on pitch-``q`` axes): within one grey level of `canonical_crop` for any box. And a patch is
at most ``(T + 2 ceil(reach T)) x (T + 2 ceil(reach T))`` pixels whatever the box's size or aspect
ratio. Patches live in RAM up to ``memory_mb``; the rest in a file in ``cache_dir``, written and read
a patch at a time (``pwrite``/``pread``), so the process's RSS stays near ``memory_mb`` whatever the
dataset (the page cache still keeps the file in memory while memory is free).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pandas as pd

from cropclf.data.crops import Problem, cut_window, expand_box, integer_windows, letterbox, resize, why_not_croppable
from cropclf.errors import ConfigError, ImageError
from cropclf.data.images import load_image, probe_image
from cropclf.progress import Progress


class PatchStore:
    """Region patches for a whole annotation frame, built by decoding each image once.

    Args:
        frame: regions from `read_annotations` (index labels identify regions).
        out_hw: the model's input ``(height, width)``.
        margin: context margin (fraction of the box per side).
        reach: how far a jittered window may reach beyond the whole-pixel margin window, as a
            fraction of that window per side (`crops.jitter_reach`; 0 for regions never jittered):
            one number, or one per row of ``frame``.
        mode: ``"stretch"`` or ``"letterbox"`` (letterbox scales both axes alike).
        min_size: boxes narrower or lower than this (pixels) cannot be cropped.
        pad_value: fill for pixels outside the image.
        memory_mb: patches beyond this many megabytes go to a file on disk.
        cache_dir: folder for that file (created if missing; default: the system's temporary folder).
        threads: decoding threads (OpenCV releases the GIL while decoding).
        progress: show a progress bar while decoding.
    """

    def __init__(self, frame: pd.DataFrame, out_hw, margin: float, reach=0.0, mode: str = "stretch",
                 min_size: float = 2.0, pad_value: int = 0, memory_mb: int = 2048, cache_dir=None,
                 threads: int = 1, progress: bool = True):
        self.out_hw, self.margin, self.mode, self.pad_value = tuple(out_hw), margin, mode, pad_value
        self.problems: list[Problem] = []
        self.bad_images: dict[str, str] = {}
        self.slot = {}  # frame index label -> slot
        boxes = frame[["x", "y", "width", "height"]].to_numpy(np.float64)
        reach = np.broadcast_to(np.asarray(reach, np.float64), (len(frame),))
        if np.any(reach < 0) or not np.all(np.isfinite(reach)):
            raise ValueError(f"`reach` must be finite and >= 0. Received: {np.unique(reach)[:5]}")
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
            why = why_not_croppable(box, sizes.get(path), min_size)
            if path in self.bad_images and (why is None or why[0] != "non_finite"):
                why = "unreadable_image", "image missing or unreadable"
            if why:
                self.problems.append(Problem(path, row, why[1], why[0], label))
            else:
                keep.append(k)

        # 2. Patch grids (see the module docstring), all per slot and per axis, x then y.
        n = len(keep)
        windows = integer_windows(expand_box(boxes[keep].reshape(-1, 4), margin))
        self.margin_boxes = np.column_stack([windows[:, :2], windows[:, 2:] - windows[:, :2]])  # (x, y, w, h)
        self.image_hw = np.array([sizes[paths[k]] for k in keep], np.int64).reshape(n, 2)  # for `keep_border`
        lengths = self.margin_boxes[:, 2:].astype(np.float64)  # L: (Lx, Ly)
        self.targets = _fit_sizes(lengths, self.out_hw, mode)  # T: (Tx, Ty), as crops.fit_size gives them
        self.area = np.all(self.targets <= lengths, axis=1)  # crops.resize area-averages iff both shrink
        self.pitch = np.where(self.targets < lengths, lengths / self.targets, 1.0)  # q: image px per patch px
        self.centre = np.where(self.targets < lengths, self.targets, lengths).astype(np.int64)  # margin window
        self.room = np.ceil(lengths * reach[keep, None] / self.pitch).astype(np.int64)  # patch px each side
        self.origin = windows[:, :2] - self.room * self.pitch  # image coordinates of the patch's corner
        self.shapes = (self.centre + 2 * self.room)[:, ::-1].copy()  # (h, w)
        self._roomless = ~self.room.any(axis=1)  # no jitter room: the patch is the margin window resized
        self.slot = {frame.index[k]: s for s, k in enumerate(keep)}
        sizes_bytes = self.shapes[:, 0] * self.shapes[:, 1] * 3
        self.offsets = np.concatenate([[0], np.cumsum(sizes_bytes)]).astype(np.int64)
        self.nbytes = int(self.offsets[-1])
        # RAM holds the first slots, up to memory_mb; the rest go to a file (see `patch`)
        self.ram_slots = int(np.searchsorted(self.offsets, memory_mb * 2**20, side="right")) - 1
        ram_bytes = int(self.offsets[self.ram_slots])
        self.disk_nbytes = self.nbytes - ram_bytes
        self.buffer = np.empty(max(ram_bytes, 1), np.uint8)
        self._tmp = None
        if self.disk_nbytes:
            self._tmp = _spill_file(cache_dir)
            os.ftruncate(self._tmp.fileno(), self.disk_nbytes)
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
                    image = load_image(path, probed=True)  # step 1 probed it
                    for s in slots:
                        self._write(s, self._resample(image, s))
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
            self.problems.extend(Problem(path, self._rows[s], "image unreadable", "unreadable_image", self._labels[s])
                                 for s in slots)

    # --- building ---------------------------------------------------------------------------

    def _resample(self, image: np.ndarray, s: int) -> np.ndarray:
        """Slot ``s``'s patch from the decoded image: rows first, then columns; padding never allocated."""
        height, width = image.shape[:2]
        (ox, oy), (qx, qy), (ph, pw) = self.origin[s], self.pitch[s], self.shapes[s]
        area = bool(self.area[s])
        if self._roomless[s] and ph * pw <= INTEGRAL_MAX_PIXELS:
            # No jitter room: the grid is the whole-pixel margin window itself, so the patch is that window
            # resized, in one C call instead of a dozen numpy ones per region. Shrinking both axes, that
            # is crops.resize's own call on the same pixels: canonical_crop's crop exactly. Otherwise on
            # float32, the same linear samples as below (cv2's uint8 linear path rounds its weights).
            x, y = int(ox), int(oy)
            (lx, ly), (cx, cy) = self.margin_boxes[s][2:], self.centre[s]
            x1, y1 = x + int(lx), y + int(ly)
            inside = x >= 0 and y >= 0 and x1 <= width and y1 <= height
            cut = image[y:y1, x:x1] if inside else cut_window(image, (x, y, x1, y1), self.pad_value)
            if area:
                return cv2.resize(cut, (int(cx), int(cy)), interpolation=cv2.INTER_AREA)
            means = cv2.resize(cut.astype(np.float32), (int(cx), int(cy)), interpolation=cv2.INTER_LINEAR)
            return np.clip(np.rint(means), 0, 255).astype(np.uint8)
        # only the image pixels the grid touches (a linear sample reads one pixel past its position)
        x0, x1 = max(0, int(np.floor(ox)) - 1), min(width, int(np.ceil(ox + pw * qx)) + 1)
        y0, y1 = max(0, int(np.floor(oy)) - 1), min(height, int(np.ceil(oy + ph * qy)) + 1)
        if area and (y1 - y0) * (x1 - x0) <= INTEGRAL_MAX_PIXELS:  # the common case, in one C pass
            means = _area_means(image[y0:y1, x0:x1], (y0, x0), (oy, ox), (qy, qx), (ph, pw), self.pad_value)
        else:
            rows = _resample_axis(image[y0:y1, x0:x1], y0, height, oy, qy, ph, area, self.pad_value)
            means = _resample_axis(rows.transpose(1, 0, 2), x0, width, ox, qx, pw, area,
                                   self.pad_value).transpose(1, 0, 2)
        return np.clip(np.rint(means), 0, 255).astype(np.uint8)

    # --- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.shapes)

    def has(self, label) -> bool:
        s = self.slot.get(label)
        return s is not None and bool(self.valid[s])

    def patch(self, s: int) -> np.ndarray:
        """Slot ``s``'s patch, ``[h, w, 3]`` uint8: a view of RAM, or (read-only) bytes read from the file.

        The file is read with ``pread``, not mapped: a mapping's pages count in the process's RSS once
        touched, and an epoch touches them all; the page cache still keeps a file that fits in memory.
        """
        h, w = self.shapes[s]
        start, end = int(self.offsets[s]), int(self.offsets[s + 1])
        if s < self.ram_slots:
            return self.buffer[start:end].reshape(h, w, 3)
        base = int(self.offsets[self.ram_slots])
        data = os.pread(self._tmp.fileno(), end - start, start - base)
        if len(data) != end - start:
            raise OSError(f"the patch cache file {self._tmp.name} is shorter than written (removed or "
                          f"truncated while in use?)")
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)

    def _write(self, s: int, patch: np.ndarray) -> None:
        start = int(self.offsets[s])
        if s < self.ram_slots:
            self.buffer[start:int(self.offsets[s + 1])] = patch.reshape(-1)
        else:
            os.pwrite(self._tmp.fileno(), np.ascontiguousarray(patch), start - int(self.offsets[self.ram_slots]))

    def to_patch(self, s: int, window) -> np.ndarray:
        """Converts an ``(x, y, w, h)`` window in image pixels to the slot's patch pixels."""
        (ox, oy), (qx, qy) = self.origin[s], self.pitch[s]
        x, y, w, h = window
        return np.array([(x - ox) / qx, (y - oy) / qy, w / qx, h / qy])

    def canonical(self, s: int) -> np.ndarray:
        """The region's `crops.canonical_crop` (within one grey level): its margin window, resized.

        The margin window is the whole-pixel sub-window ``room : room + centre`` of the patch; on
        axes already at the canonical pitch the resize leaves it as it is.
        """
        (rx, ry), (cx, cy), (tx, ty) = self.room[s], self.centre[s], self.targets[s]
        window = self.patch(s)[ry:ry + cy, rx:rx + cx]
        return letterbox(resize(window, (int(ty), int(tx))), self.out_hw, self.pad_value)

    def problems_for(self, labels) -> list[Problem]:
        """The problems of the regions with these frame index labels (for split-level reports)."""
        wanted = set(labels)
        return [p for p in self.problems if p.label in wanted]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None

    def describe(self) -> str:
        where = "memory" if not self.on_disk else (
            f"memory and {self.disk_nbytes / 2**20:.1f} MiB of them in a file on disk ({self._tmp.name})")
        return (f"{len(self)} region patches, {self.nbytes / 2**20:.1f} MiB in {where}; "
                f"{len(self.problems)} region(s) left out, {len(self.bad_images)} bad image(s)")


def _fit_sizes(lengths: np.ndarray, out_hw, mode: str) -> np.ndarray:
    """`crops.fit_size` for ``[N, 2]`` window lengths ``(Lx, Ly)``: ``[N, 2]`` int64 ``(Tx, Ty)``."""
    oh, ow = out_hw
    if mode == "stretch":
        return np.tile(np.array([ow, oh], np.int64), (len(lengths), 1))
    scale = np.minimum(oh / lengths[:, 1], ow / lengths[:, 0])
    # np.round rounds half to even, as Python's round in fit_size does
    tx = np.maximum(1, np.minimum(ow, np.round(lengths[:, 0] * scale)))
    ty = np.maximum(1, np.minimum(oh, np.round(lengths[:, 1] * scale)))
    return np.column_stack([tx, ty]).astype(np.int64)


INTEGRAL_MAX_PIXELS = 2**23  # larger windows take the chunked path: an integral image is 4 bytes a value


def _area_means(part: np.ndarray, first, origin, pitch, shape, pad_value: int) -> np.ndarray:
    """Cell means of a ``shape`` grid of ``pitch``-sized cells from ``origin``, as `_resample_axis`
    gives them with ``area=True`` on both axes, from one integral image.

    ``part`` holds the image pixels from ``first`` (row, column) on; the integral of a piecewise
    constant image is bilinear inside each pixel, so interpolating the integral image at the cells'
    fractional edges gives the exact integral over them. Outside the image the signal is ``pad_value``.
    """
    sums = cv2.integral(np.ascontiguousarray(part), sdepth=cv2.CV_32S)  # exact: 255 * 2**23 < 2**31
    inside = []
    for axis in (0, 1):
        n = part.shape[axis]
        edges = origin[axis] + pitch[axis] * np.arange(shape[axis] + 1)
        t = np.clip(edges, first[axis], first[axis] + n) - first[axis]
        k = np.minimum(np.floor(t).astype(np.int64), n - 1)
        f = (t - k)[:, None, None] if axis == 0 else (t - k)[None, :, None]
        low, high = np.take(sums, k, axis=axis).astype(np.float64), np.take(sums, k + 1, axis=axis)
        sums = low + f * (high - low)
        inside.append(np.diff(t))  # length of each cell inside the image
    cells = sums[1:, 1:] - sums[:-1, 1:] - sums[1:, :-1] + sums[:-1, :-1]
    if pad_value:
        cells += pad_value * (pitch[0] * pitch[1] - np.outer(*inside))[..., None]
    return cells / (pitch[0] * pitch[1])


def _resample_axis(a: np.ndarray, first: int, size: int, origin: float, pitch: float, count: int, area: bool,
                   pad_value: int) -> np.ndarray:
    """Resamples axis 0 of ``a`` onto ``count`` cells of ``pitch`` pixels starting at ``origin``.

    ``a`` holds pixels ``first, first + 1, ...`` of an axis ``size`` pixels long; beyond the image the
    signal is ``pad_value`` (as `crops.cut_window` pads). ``area``: each cell is the mean over its
    interval (exact fractional coverage, as cv2's INTER_AREA); otherwise the linear sample at its
    centre (as cv2's INTER_LINEAR). Returns float64 ``[count, ...]``.
    """
    n = len(a)
    if area:
        edges = origin + pitch * np.arange(count + 1)
        # integral of the padded signal from `first` to each edge: prefix sums plus the partial pixel
        inside = np.clip(edges, first, first + n) - first
        k = np.minimum(np.floor(inside).astype(np.int64), max(n - 1, 0))
        frac = (inside - k).reshape(-1, *[1] * (a.ndim - 1))
        out = np.empty((count, *a.shape[1:]))
        chunk = max(1, 2**22 // max(1, n * int(np.prod(a.shape[2:], dtype=np.int64))))  # bounded float copy
        for c in range(0, max(a.shape[1], 1), chunk):
            part = a[:, c:c + chunk].astype(np.float64)
            prefix = np.concatenate([np.zeros((1, *part.shape[1:])), np.cumsum(part, axis=0)])
            integral = prefix[k] + frac * part[k] if n else np.zeros((count + 1, *part.shape[1:]))
            out[:, c:c + chunk] = np.diff(integral, axis=0)
        outside = (np.minimum(edges, first) - first) + np.maximum(edges - first - n, 0)  # padded length
        if pad_value:
            out += (pad_value * np.diff(outside)).reshape(-1, *[1] * (a.ndim - 1))
        return out / pitch
    t = origin + (np.arange(count) + 0.5) * pitch - 0.5
    i = np.floor(t).astype(np.int64)
    w = (t - i).reshape(-1, *[1] * (a.ndim - 1))
    return (1 - w) * _take(a, i, first, size, pad_value) + w * _take(a, i + 1, first, size, pad_value)


def _take(a: np.ndarray, index: np.ndarray, first: int, size: int, pad_value: int) -> np.ndarray:
    """Pixels ``index`` of the padded axis (``pad_value`` outside ``[0, size)``) from ``a``."""
    out = a[np.clip(index - first, 0, len(a) - 1)].astype(np.float64)
    out[(index < 0) | (index >= size)] = pad_value
    return out


def _spill_file(cache_dir):
    """The temporary file patches spill into, in ``cache_dir`` (made if missing) or the system's folder."""
    if cache_dir is not None:
        try:
            os.makedirs(cache_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"Cannot use the patch cache folder {cache_dir} (`data.cache_dir`): "
                              f"{e.strerror}. Received: {cache_dir}") from None
    return tempfile.NamedTemporaryFile(prefix="cropclf-patches-", suffix=".u8", dir=cache_dir)


def default_threads() -> int:
    """Threads for the decoding pass: one per CPU core (at most 8); OpenCV releases the GIL."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
