"""SavedModel export: one self-contained artefact that classifies regions with TensorFlow alone.

Signatures (each returns, per head, by its output key ``k`` (`cropclf.data.labels.output_keys`: head names
may hold spaces, digits or any script, keys are ``[a-z][a-z0-9_]*``): ``k_label`` string ``[N]``,
``k_score`` float ``[N]``, ``k_probabilities`` float ``[N, classes]``):

* ``serving_default(images)``: uint8 ``[N, H, W, 3]`` crops the caller cut out, resized in the graph;
* ``classify_regions(image, boxes)``: one uint8 ``[H, W, 3]`` image and float ``[K, 4]`` VIA boxes
  ``(x, y, width, height)``; the crop is done in the graph exactly as evaluation does it
  (`cropclf.data.crops.canonical_crop`: margin, whole-pixel window, padding, area resize);
* ``classify_jpeg(image_bytes, boxes)``: encoded JPEG/PNG bytes, decoded in the graph with the EXIF
  orientation applied (as VIA and OpenCV show the image), then as ``classify_regions``;
* ``metadata()``: JSON strings: ``labels_json`` (the label maps, by head name), ``preprocessing_json``
  (size, margin, resize mode, padding) and ``heads_json`` (per head, in order: its name, key, the
  names of its three outputs and its classes), so a client finds a head's outputs without cropclf.

The export path (``runs/x/saved_model``) is a link to the newest numbered version folder beside it
(``runs/x/saved_model.versions/<N>``, TF Serving's layout), swapped in one rename: see `publish_version`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from cropclf import artifacts
from cropclf.config import Config
from cropclf.data.labels import LabelMap, label_maps_to_json, output_keys
from cropclf.data.loading import Run


def export_run(run_dir, out_dir=None, log=print) -> Path:
    """Exports ``run_dir/model.keras`` (best checkpoint) to ``out_dir`` (default ``run_dir/saved_model``)."""
    run = Run(run_dir)
    out = Path(out_dir) if out_dir else run.dir / "saved_model"
    export_saved_model(run.load_model(), run.label_maps, run.config, out)
    log(f"Exported SavedModel to {out} (signatures: serving_default, classify_regions, classify_jpeg, metadata).")
    return out


def export_saved_model(model: keras.Model, label_maps: dict[str, LabelMap], cfg: Config, out_dir) -> Path:
    """Writes the SavedModel as a new version and points ``out_dir`` at it in one step.

    ``out_dir`` is a symbolic link to ``<out_dir>.versions/<N>``; at every instant it holds a complete
    SavedModel, the previous one until the new one is whole. A failure leaves the previous one in use.
    """
    crop = cfg.crop
    out_hw = tuple(crop.image_size)
    heads = list(label_maps)
    names = output_keys(heads)
    classes = {h: tf.constant(label_maps[h].classes, tf.string) for h in heads}
    metadata = {
        "labels_json": tf.constant(label_maps_to_json(label_maps)),
        "preprocessing_json": tf.constant(json.dumps({
            "image_size": list(out_hw), "margin": crop.margin, "resize": crop.resize,
            "pad_value": crop.pad_value, "min_size": crop.min_size,  # prediction leaves out what training did
            "box_format": "VIA (x, y, width, height) in image pixels",
            "pixels": "uint8 RGB, 0..255; EXIF orientation applied by classify_jpeg", "heads": heads})),
        # Head names may hold anything; outputs are named by key. A client finds a head's outputs here.
        "heads_json": tf.constant(json.dumps(
            [{"head": h, "key": k, "label": f"{k}_label", "score": f"{k}_score",
              "probabilities": f"{k}_probabilities", "classes": label_maps[h].classes} for h, k in names.items()],
            ensure_ascii=False)),
    }

    def predict(batch):
        probs = model(tf.cast(batch, tf.float32), training=False)
        result = {}
        for h in heads:
            p = tf.cast(probs[names[h]], tf.float32)
            result[f"{names[h]}_label"] = tf.gather(classes[h], tf.argmax(p, axis=-1))
            result[f"{names[h]}_score"] = tf.reduce_max(p, axis=-1)
            result[f"{names[h]}_probabilities"] = p
        return result

    def crop_regions(image, boxes):
        image = tf.convert_to_tensor(image, tf.uint8)
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        crops = tf.map_fn(lambda b: crop_in_graph(image, b, out_hw, crop.margin, crop.resize, crop.pad_value),
                          boxes, fn_output_signature=tf.TensorSpec([*out_hw, 3], tf.uint8))
        return crops

    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_default(images):
        shape = tf.shape(images)
        resized = resize_to_output(images, shape[1], shape[2], out_hw, crop.resize, crop.pad_value)
        return predict(resized)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image"),
                                  tf.TensorSpec([None, 4], tf.float32, name="boxes")])
    def classify_regions(image, boxes):
        return predict(crop_regions(image, boxes))

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image_bytes"),
                                  tf.TensorSpec([None, 4], tf.float32, name="boxes")])
    def classify_jpeg(image_bytes, boxes):
        return predict(crop_regions(decode_oriented(image_bytes), boxes))

    @tf.function(input_signature=[])
    def metadata_fn():
        return dict(metadata)

    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("classify_regions", classify_regions)
    archive.add_endpoint("classify_jpeg", classify_jpeg)
    archive.add_endpoint("metadata", metadata_fn)
    out_dir = Path(out_dir)
    with publish_version(out_dir) as tmp:
        archive.write_out(str(tmp), verbose=False)
        artifacts.write_text(tmp / "assets.extra" / "labels.json", label_maps_to_json(label_maps) + "\n")
        artifacts.write_text(tmp / "assets.extra" / "config.json", cfg.to_json() + "\n")
    return out_dir


# --- publishing: a complete SavedModel at ``out_dir`` at every instant ------------------------------
#
# ``out_dir`` (e.g. runs/demo/saved_model) is a symbolic link to ``<out_dir>.versions/<N>``, a numbered
# folder as TF Serving expects (``<out_dir>.versions`` can be its model base path). A new export is
# written to a temporary folder, renamed to the next number, and the link is then replaced by a new
# one with a single rename: readers see the old version or the new one, never none. A kill at any
# step leaves at most a temporary folder or link behind, which the next export removes.

KEEP_VERSIONS = 2  # the newest and the one before it, which a reader may still be loading


@contextlib.contextmanager
def publish_version(out_dir: Path):
    """Yields a temporary folder to write a SavedModel into; on success it becomes ``out_dir``'s target."""
    versions = out_dir.with_name(out_dir.name + ".versions")
    versions.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out_dir, versions)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=versions))
    try:
        yield tmp
        _fsync_tree(tmp)  # the files are on disk before any name points at them
        number = _rename_to_next_number(tmp, versions)
        link = out_dir.with_name(f".{out_dir.name}.link-{os.getpid()}")
        _remove(link)
        os.symlink(f"{versions.name}/{number}", link)
        if out_dir.is_dir() and not out_dir.is_symlink():  # a folder from before versioned exports
            _swap_in_link_for_folder(link, out_dir, versions)
        else:
            os.replace(link, out_dir)
        _fsync_dir(out_dir.parent)
        for old in _numbered(versions)[:-KEEP_VERSIONS]:
            shutil.rmtree(versions / str(old), ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove(out_dir.with_name(f".{out_dir.name}.link-{os.getpid()}"))


def _rename_to_next_number(tmp: Path, versions: Path) -> int:
    """Renames ``tmp`` to the next free version number (another export may take one meanwhile)."""
    while True:
        number = max(_numbered(versions), default=0) + 1
        try:
            os.rename(tmp, versions / str(number))  # fails if that number exists and is not empty
            return number
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


def _swap_in_link_for_folder(link: Path, out_dir: Path, versions: Path) -> None:
    """Replaces a plain folder by the link in one step (Linux renameat2 exchange) where possible."""
    if _exchange(link, out_dir):
        shutil.rmtree(link)  # the link's name now holds the old folder
        return
    # no atomic exchange here (not Linux, or a file system without it): a moment without a model
    legacy = versions / f".legacy-{os.getpid()}"
    os.rename(out_dir, legacy)
    os.replace(link, out_dir)
    shutil.rmtree(legacy, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two names (renameat2 with RENAME_EXCHANGE); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), str(b))


def _numbered(versions: Path) -> list[int]:
    return sorted(int(p.name) for p in versions.iterdir() if p.name.isdigit())


def _remove_leftovers(out_dir: Path, versions: Path) -> None:
    """Removes the temporary folders and links of exports that were killed (their process is gone)."""
    links = out_dir.parent.glob(f".{out_dir.name}.link-*")
    for path in [*versions.glob(".tmp-*"), *versions.glob(".legacy-*"), *links]:
        pid = path.name.split("-")[-2] if path.name.startswith(".tmp-") else path.name.split("-")[-1]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- preprocessing in the graph (mirrors cropclf.data.crops.canonical_crop) -----------------------------

def crop_in_graph(image, box, out_hw, margin: float, mode: str, pad_value: int):
    """Margin, whole-pixel window, cut with padding, area resize: `canonical_crop` in TensorFlow."""
    # float64 from the start, as `expand_box` computes: the margin box in float32 rounds differently,
    # and its floor/ceil can then give a window one pixel wider than numpy's (tens of grey levels)
    x, y, w, h = (tf.clip_by_value(tf.cast(box[i], tf.float64), -1e8, 1e8) for i in range(4))
    bx, by, bw, bh = x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)
    x0, y0 = tf.cast(tf.floor(bx), tf.int32), tf.cast(tf.floor(by), tf.int32)
    x1 = tf.maximum(tf.cast(tf.math.ceil(bx + bw), tf.int32), x0 + 1)
    y1 = tf.maximum(tf.cast(tf.math.ceil(by + bh), tf.int32), y0 + 1)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # a window reaching over an image's size beyond any side is padding only: bound its memory
    x0, y0 = tf.clip_by_value(x0, -width, 2 * width - 1), tf.clip_by_value(y0, -height, 2 * height - 1)
    x1, y1 = tf.clip_by_value(x1, x0 + 1, 2 * width), tf.clip_by_value(y1, y0 + 1, 2 * height)
    sx0, sy0 = tf.clip_by_value(x0, 0, width), tf.clip_by_value(y0, 0, height)
    sx1, sy1 = tf.maximum(tf.clip_by_value(x1, 0, width), sx0), tf.maximum(tf.clip_by_value(y1, 0, height), sy0)
    cut = image[sy0:sy1, sx0:sx1]
    left = tf.clip_by_value(sx0 - x0, 0, x1 - x0)
    top = tf.clip_by_value(sy0 - y0, 0, y1 - y0)
    pads = [[top, y1 - y0 - top - (sy1 - sy0)], [left, x1 - x0 - left - (sx1 - sx0)], [0, 0]]
    window = tf.pad(cut, pads, constant_values=tf.cast(pad_value, tf.uint8))
    return resize_to_output(window[None], y1 - y0, x1 - x0, out_hw, mode, pad_value)[0]


def resize_to_output(images, src_h, src_w, out_hw, mode: str, pad_value: int):
    """Area resize of a uint8 batch to ``out_hw`` (stretched or letterboxed), rounded back to uint8."""
    oh, ow = out_hw
    if mode == "stretch":
        th, tw = tf.constant(oh), tf.constant(ow)
    else:
        scale = tf.minimum(oh / tf.cast(src_h, tf.float64), ow / tf.cast(src_w, tf.float64))
        th = tf.clip_by_value(tf.cast(tf.round(tf.cast(src_h, tf.float64) * scale), tf.int32), 1, oh)
        tw = tf.clip_by_value(tf.cast(tf.round(tf.cast(src_w, tf.float64) * scale), tf.int32), 1, ow)
    # OpenCV's INTER_AREA averages areas when shrinking on both axes and is bilinear otherwise
    size, pixels = tf.stack([th, tw]), tf.cast(images, tf.float32)
    resized = tf.cond(tf.logical_and(th <= src_h, tw <= src_w),
                      lambda: tf.image.resize(pixels, size, method="area"),
                      lambda: tf.image.resize(pixels, size, method="bilinear"))
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    if mode == "stretch":
        return tf.ensure_shape(resized, [None, oh, ow, 3])
    top, left = (oh - th) // 2, (ow - tw) // 2
    padded = tf.pad(resized, [[0, 0], [top, oh - th - top], [left, ow - tw - left], [0, 0]],
                    constant_values=tf.cast(pad_value, tf.uint8))
    return tf.ensure_shape(padded, [None, oh, ow, 3])


def decode_oriented(image_bytes):
    """Decodes JPEG/PNG/WebP/BMP/GIF bytes to uint8 RGB and applies the EXIF orientation as OpenCV does."""
    # TensorFlow's default JPEG IDCT (the fast integer one) is off by up to 255 grey levels on sharp
    # black-and-white edges; the accurate one gives OpenCV's pixels exactly (tests/test_exif.py)
    image = tf.cond(tf.equal(tf.strings.substr(image_bytes, 0, 2), b"\xff\xd8"),
                    lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    orientation = exif_orientation(image_bytes)
    branches = [
        lambda: image,  # 0: no tag, or not 1-8 (OpenCV ignores those)
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2
        lambda: tf.image.rot90(image, 2),  # 3
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.transpose(image, [1, 0, 2]),  # 5: transpose
        lambda: tf.image.rot90(image, 3),  # 6: rotate 90 clockwise
        lambda: tf.image.rot90(tf.transpose(image, [1, 0, 2]), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: rotate 90 counter-clockwise
    ]
    return tf.switch_case(orientation, branches)


# Where OpenCV finds the EXIF block (checked in tests/test_exif.py): a JPEG's first APP1 segment that
# starts with "Exif\0\0" (before the scan), a PNG's eXIf chunk (before or after the image data), a
# WebP's EXIF chunk. Each container is walked segment by segment, so image data is never taken for
# a header; the block is a TIFF structure whose first directory may hold the Orientation tag.

def exif_orientation(image_bytes):
    """The EXIF Orientation tag (1-8) of a JPEG, PNG or WebP, or 0 (none, or a value OpenCV ignores)."""
    data = tf.convert_to_tensor(image_bytes, tf.string)
    size = tf.cast(tf.strings.length(data), tf.int64)

    def text(pos, n):
        pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, size)
        return tf.strings.substr(data, pos, tf.constant(n, tf.int64))

    def u8(pos, n: int):
        raw = tf.cast(tf.io.decode_raw(text(pos, n), tf.uint8), tf.int64)
        return tf.ensure_shape(tf.pad(raw, [[0, n - tf.shape(raw, out_type=tf.int64)[0]]]), [n])

    def walk(start, step):
        """Follows ``step(pos) -> (next_pos, tiff_offset or -1, stop)`` from ``start``; -1 if not found."""
        def body(pos, found, done):
            nxt, hit, stop = step(pos)
            stop = tf.logical_or(stop, pos + 8 > size)
            return nxt, tf.where(stop, tf.constant(-1, tf.int64), hit), tf.logical_or(stop, hit >= 0)
        _, found, _ = tf.while_loop(lambda pos, found, done: tf.logical_not(done), body,
                                    [tf.constant(start, tf.int64), tf.constant(-1, tf.int64), tf.constant(False)])
        return found

    def jpeg_step(pos):
        b = u8(pos, 4)
        fill = tf.equal(b[1], 0xFF)
        standalone = tf.logical_or(tf.equal(b[1], 0x01), tf.logical_and(b[1] >= 0xD0, b[1] <= 0xD7))
        length = 256 * b[2] + b[3]
        exif = tf.logical_and(tf.equal(b[1], 0xE1), tf.equal(text(pos + 4, 6), b"Exif\x00\x00"))
        stop = tf.reduce_any([tf.not_equal(b[0], 0xFF), tf.equal(b[1], 0xDA), tf.equal(b[1], 0xD9),
                              tf.logical_and(tf.logical_not(tf.logical_or(fill, standalone)), length < 2)])
        nxt = tf.where(fill, pos + 1, tf.where(standalone, pos + 2, pos + 2 + length))
        return nxt, tf.where(exif, pos + 10, tf.constant(-1, tf.int64)), stop

    def png_step(pos):
        b = u8(pos, 4)
        length = ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]
        kind = text(pos + 4, 4)
        return (pos + 12 + length, tf.where(tf.equal(kind, b"eXIf"), pos + 8, tf.constant(-1, tf.int64)),
                tf.equal(kind, b"IEND"))

    def webp_step(pos):
        b = u8(pos + 4, 4)
        length = ((b[3] * 256 + b[2]) * 256 + b[1]) * 256 + b[0]
        found = tf.where(tf.equal(text(pos, 4), b"EXIF"), pos + 8, tf.constant(-1, tf.int64))
        return pos + 8 + length + length % 2, found, tf.constant(False)

    is_jpeg = tf.equal(text(0, 2), b"\xff\xd8")
    is_png = tf.equal(text(0, 8), b"\x89PNG\r\n\x1a\n")
    is_webp = tf.logical_and(tf.equal(text(0, 4), b"RIFF"), tf.equal(text(8, 4), b"WEBP"))
    tiff = tf.case([(is_jpeg, lambda: walk(2, jpeg_step)), (is_png, lambda: walk(8, png_step)),
                    (is_webp, lambda: walk(12, webp_step))], default=lambda: tf.constant(-1, tf.int64))
    return tf.cond(tiff >= 0, lambda: _tiff_orientation(u8, tiff), lambda: tf.constant(0, tf.int32))


def _tiff_orientation(u8, tiff):
    """Reads tag 0x0112 from the first directory of the TIFF structure at byte ``tiff``; 0 unless 1-8."""
    head = u8(tiff, 8)
    little = tf.logical_and(tf.equal(head[0], 73), tf.equal(head[1], 73))  # "II", else "MM"
    big = tf.logical_and(tf.equal(head[0], 77), tf.equal(head[1], 77))

    def u16(b, i):
        return tf.where(little, b[i] + 256 * b[i + 1], 256 * b[i] + b[i + 1])

    def u32(b, i):
        return tf.where(little, u16(b, i) + 65536 * u16(b, i + 2), 65536 * u16(b, i) + u16(b, i + 2))

    valid = tf.logical_and(tf.logical_or(little, big), tf.equal(u16(head, 2), 42))
    ifd = tiff + u32(head, 4)
    entries = u8(ifd, 2 + 12 * 64)  # OpenCV's own reader has no such bound; 64 tags is plenty for IFD0
    count = tf.minimum(u16(entries, 0), 64)
    starts = 2 + 12 * tf.range(count)
    tags = tf.where(little, tf.gather(entries, starts) + 256 * tf.gather(entries, starts + 1),
                    256 * tf.gather(entries, starts) + tf.gather(entries, starts + 1))
    hit = tf.where(tf.equal(tags, 0x0112))[:, 0]
    value = tf.cond(tf.size(hit) > 0, lambda: u16(entries, tf.gather(starts, hit[0]) + 8),
                    lambda: tf.constant(0, tf.int64))
    ok = tf.logical_and(valid, tf.logical_and(value >= 1, value <= 8))
    return tf.cast(tf.where(ok, value, 0), tf.int32)
