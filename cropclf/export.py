"""SavedModel export: one self-contained artefact that classifies regions with TensorFlow alone.

Signatures (each returns, per head, by its output key ``k`` (`cropclf.labels.output_keys`: head names
may hold spaces, digits or any script, keys are ``[a-z][a-z0-9_]*``): ``k_label`` string ``[N]``,
``k_score`` float ``[N]``, ``k_probabilities`` float ``[N, classes]``):

* ``serving_default(images)``: uint8 ``[N, H, W, 3]`` crops the caller cut out, resized in the graph;
* ``classify_regions(image, boxes)``: one uint8 ``[H, W, 3]`` image and float ``[K, 4]`` VIA boxes
  ``(x, y, width, height)``; the crop is done in the graph exactly as evaluation does it
  (`cropclf.crops.canonical_crop`: margin, whole-pixel window, padding, area resize);
* ``classify_jpeg(image_bytes, boxes)``: encoded JPEG/PNG bytes, decoded in the graph with the EXIF
  orientation applied (as VIA and OpenCV show the image), then as ``classify_regions``;
* ``metadata()``: JSON strings: ``labels_json`` (the label maps, by head name), ``preprocessing_json``
  (size, margin, resize mode, padding) and ``heads_json`` (per head, in order: its name, key, the
  names of its three outputs and its classes), so a client finds a head's outputs without cropclf.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from cropclf import artifacts
from cropclf.config import Config
from cropclf.labels import LabelMap, label_maps_to_json, load_label_maps, output_keys


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
    """Writes the SavedModel atomically: a failure leaves any previous export untouched."""
    crop = cfg.crop
    out_hw = tuple(crop.image_size)
    heads = list(label_maps)
    names = output_keys(heads)
    classes = {h: tf.constant(label_maps[h].classes, tf.string) for h in heads}
    metadata = {
        "labels_json": tf.constant(label_maps_to_json(label_maps)),
        "preprocessing_json": tf.constant(json.dumps({
            "image_size": list(out_hw), "margin": crop.margin, "resize": crop.resize,
            "pad_value": crop.pad_value, "box_format": "VIA (x, y, width, height) in image pixels",
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
    with artifacts.atomic_dir(out_dir) as tmp:
        archive.write_out(str(tmp), verbose=False)
        artifacts.write_text(tmp / "assets.extra" / "labels.json", label_maps_to_json(label_maps) + "\n")
        artifacts.write_text(tmp / "assets.extra" / "config.json", cfg.to_json() + "\n")
    return out_dir


# --- preprocessing in the graph (mirrors cropclf.crops.canonical_crop) -----------------------------

def crop_in_graph(image, box, out_hw, margin: float, mode: str, pad_value: int):
    """Margin, whole-pixel window, cut with padding, area resize: `canonical_crop` in TensorFlow."""
    x, y, w, h = box[0], box[1], box[2], box[3]
    bx, by, bw, bh = x - margin * w, y - margin * h, w * (1 + 2 * margin), h * (1 + 2 * margin)
    # float64 keeps floor/ceil identical to numpy's for coordinates like 12.999999
    bx, by, bw, bh = (tf.clip_by_value(tf.cast(v, tf.float64), -1e8, 1e8) for v in (bx, by, bw, bh))
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
