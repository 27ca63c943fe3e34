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
from cropclf.serving.graph import crop_in_graph, decode_oriented, resize_to_output


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
