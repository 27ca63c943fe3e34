"""The SavedModel's preprocessing, in TensorFlow: `crop_in_graph` mirrors `cropclf.data.crops.canonical_crop`
(tests/test_export_parity.py holds the two together), `decode_oriented` decodes JPEG/PNG/WebP bytes with
their EXIF orientation applied, as OpenCV and VIA show them (tests/test_exif.py)."""

from __future__ import annotations

import tensorflow as tf


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
