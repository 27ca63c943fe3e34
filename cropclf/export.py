"""SavedModel export: one self-contained artefact that classifies regions with TensorFlow alone.

Signatures (each returns, per head ``h``: ``h_label`` string ``[N]``, ``h_score`` float ``[N]``,
``h_probabilities`` float ``[N, classes]``):

* ``serving_default(images)``: uint8 ``[N, H, W, 3]`` crops the caller cut out, resized in the graph;
* ``classify_regions(image, boxes)``: one uint8 ``[H, W, 3]`` image and float ``[K, 4]`` VIA boxes
  ``(x, y, width, height)``; the crop is done in the graph exactly as evaluation does it
  (`cropclf.crops.canonical_crop`: margin, whole-pixel window, padding, area resize);
* ``classify_jpeg(image_bytes, boxes)``: encoded JPEG/PNG bytes, decoded in the graph with the EXIF
  orientation applied (as VIA and OpenCV show the image), then as ``classify_regions``;
* ``metadata()``: the label maps and preprocessing settings as JSON strings.

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
from cropclf.labels import LabelMap, label_maps_to_json, load_label_maps
from cropclf.model import output_name


def export_run(run_dir, out_dir=None, log=print) -> Path:
    """Exports ``run_dir/model.keras`` (best checkpoint) to ``out_dir`` (default ``run_dir/saved_model``)."""
    run_dir = Path(run_dir)
    cfg = Config.from_file(run_dir / "config.json")
    maps = load_label_maps(run_dir / "labels.json")
    model = keras.models.load_model(run_dir / "model.keras")
    out = Path(out_dir) if out_dir else run_dir / "saved_model"
    export_saved_model(model, maps, cfg, out)
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
    names = {h: output_name(h) for h in heads}
    classes = {h: tf.constant(label_maps[h].classes, tf.string) for h in heads}
    metadata = {
        "labels_json": tf.constant(label_maps_to_json(label_maps)),
        "preprocessing_json": tf.constant(json.dumps({
            "image_size": list(out_hw), "margin": crop.margin, "resize": crop.resize,
            "pad_value": crop.pad_value, "box_format": "VIA (x, y, width, height) in image pixels",
            "pixels": "uint8 RGB, 0..255; EXIF orientation applied by classify_jpeg", "heads": heads})),
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
    for path in [*versions.glob(".tmp-*"), *versions.glob(".legacy-*"), *out_dir.parent.glob(f".{out_dir.name}.link-*")]:
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


# --- preprocessing in the graph (mirrors cropclf.crops.canonical_crop) -----------------------------

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
    """Decodes JPEG/PNG/BMP/GIF bytes to uint8 RGB and applies the EXIF orientation tag, if any."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    orientation = exif_orientation(image_bytes)
    branches = [
        lambda: image,  # 0: no tag
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2
        lambda: tf.image.rot90(image, 2),  # 3
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.transpose(image, [1, 0, 2]),  # 5: transpose
        lambda: tf.image.rot90(image, 3),  # 6: rotate 90 clockwise
        lambda: tf.image.rot90(tf.transpose(image, [1, 0, 2]), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: rotate 90 counter-clockwise
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 0, 8), branches)


def exif_orientation(image_bytes):
    """The EXIF Orientation tag (1-8) of a JPEG, or 0 when there is none, read with string ops."""
    head = tf.strings.substr(image_bytes, 0, 65536)
    parts = tf.strings.split(head, sep=b"Exif\x00\x00", maxsplit=1)
    found = tf.logical_and(tf.size(parts) == 2, tf.strings.substr(head, 0, 2) == b"\xff\xd8")

    def read():
        tiff = tf.io.decode_raw(parts[1], tf.uint8)
        tiff = tf.concat([tf.cast(tiff, tf.int32), tf.zeros([1024], tf.int32)], 0)  # room for short files
        little = tf.logical_and(tiff[0] == 73, tiff[1] == 73)  # "II"

        def u16(i):
            return tf.where(little, tiff[i] + 256 * tiff[i + 1], 256 * tiff[i] + tiff[i + 1])

        def u32(i):
            return tf.where(little, u16(i) + 65536 * u16(i + 2), 65536 * u16(i) + u16(i + 2))

        ifd = tf.clip_by_value(u32(4), 0, tf.shape(tiff)[0] - 1024)
        count = tf.clip_by_value(u16(ifd), 0, 64)
        starts = ifd + 2 + 12 * tf.range(count)
        lo, hi = tf.gather(tiff, starts), tf.gather(tiff, starts + 1)
        tags = tf.where(little, lo + 256 * hi, 256 * lo + hi)
        hit = tf.where(tf.equal(tags, 0x0112))[:, 0]
        return tf.cond(tf.size(hit) > 0, lambda: u16(tf.gather(starts, hit[0]) + 8), lambda: 0)

    return tf.cond(found, read, lambda: 0)
