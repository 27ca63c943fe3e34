"""EXIF orientation: the SavedModel's in-graph decode turns an image exactly as OpenCV (training) does.

Each test writes the very same bytes that both decoders read: a sharp-edged, non-square image stored
with an Orientation tag (Pillow writes the tag). OpenCV's decode of those bytes is the reference.
"""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cropclf.data.crops import canonical_crop
from cropclf.serving.graph import decode_oriented, exif_orientation

STORED_HW = (24, 40)  # as stored; orientations 5-8 show it as 40x24
LOSSLESS = {"PNG": {}, "WEBP": {"lossless": True}}


def stored_image(seed=0):
    """Black, white and saturated-colour cells of 4x4 pixels."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 2, (STORED_HW[0] // 4, STORED_HW[1] // 4, 3)).astype(np.uint8) * 255
    return cells.repeat(4, 0).repeat(4, 1)


def encode(image, fmt: str, orientation: int | None, exif_prefix: bytes = b"") -> bytes:
    pil = Image.fromarray(image)
    kwargs = {"JPEG": {"quality": 100, "subsampling": 0}, **LOSSLESS}[fmt]
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    buf = io.BytesIO()
    pil.save(buf, fmt, **kwargs)
    return buf.getvalue()


def opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def in_graph(data):
    return decode_oriented(data)


def assert_same_pixels(got, want):
    """Identical, JPEG included: decoded with the accurate IDCT, TensorFlow gives OpenCV's pixels."""
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
def test_in_graph_decode_turns_every_orientation_as_opencv(fmt, orientation):
    data = encode(stored_image(), fmt, orientation)
    want = opencv(data)
    if orientation in (5, 6, 7, 8):
        assert want.shape[:2] == STORED_HW[::-1]  # OpenCV did turn it: the test means something
    assert_same_pixels(in_graph(tf.constant(data)).numpy(), want)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [0, 9, 17, 65535])
def test_invalid_orientation_is_ignored_as_opencv_ignores_it(fmt, orientation):
    data = encode(stored_image(), fmt, orientation)
    assert opencv(data).shape[:2] == STORED_HW
    assert int(exif_orientation(tf.constant(data))) == 0
    assert_same_pixels(in_graph(tf.constant(data)).numpy(), opencv(data))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _exif_block(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()[6:]  # without the "Exif\0\0" that JPEG's APP1 carries


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize("case", ["png-exif-after-image-data", "png-exif-with-jpeg-prefix",
                                  "jpeg-xmp-segment-first", "jpeg-exif-text-in-a-comment"])
def test_where_the_exif_block_may_be(case):
    """Placements OpenCV handles in its own way: the graph finds (or ignores) the tag as OpenCV does."""
    if case.startswith("png"):
        png = encode(stored_image(), "PNG", None)
        prefix = b"Exif\x00\x00" if case.endswith("prefix") else b""  # libpng rejects this chunk
        at = png.index(b"IEND") - 4 if case.endswith("data") else png.index(b"IDAT") - 4
        data = png[:at] + _png_chunk(b"eXIf", prefix + _exif_block(6)) + png[at:]
    else:
        jpeg = encode(stored_image(), "JPEG", 6)
        if case == "jpeg-xmp-segment-first":  # an XMP APP1 before the Exif APP1
            extra = _jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")
        else:  # a comment holding the text "Exif\0\0" and a fake block saying 3, before the real one
            extra = _jpeg_segment(0xFE, b"Exif\x00\x00" + _exif_block(3))
        data = jpeg[:2] + extra + jpeg[2:]
    assert_same_pixels(in_graph(tf.constant(data)).numpy(), opencv(data))


def test_gif_and_bmp_have_no_orientation():
    for fmt in ("GIF", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(stored_image()).save(buf, fmt)
        assert int(exif_orientation(tf.constant(buf.getvalue()))) == 0


def test_tiff_is_refused_by_classify_jpeg():
    """TensorFlow cannot decode TIFF; the error says which formats it takes."""
    buf = io.BytesIO()
    Image.fromarray(stored_image()).save(buf, "TIFF")
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)unknown image file format"):
        in_graph(tf.constant(buf.getvalue()))


@pytest.mark.slow
def test_classify_jpeg_serves_every_orientation_upright(tmp_path):
    """End to end through the exported SavedModel (tf.saved_model.load): classify_jpeg's crop of each
    oriented file equals `canonical_crop` of OpenCV's decode of the same bytes."""
    from test_export_parity import export_pixel_model, served_crops

    out_hw = (20, 28)
    sig = tf.saved_model.load(str(export_pixel_model(tmp_path / "sm", out_hw, 0.1))).signatures["classify_jpeg"]
    cases = [("JPEG", o) for o in range(1, 10)] + [(fmt, o) for fmt in ("PNG", "WEBP") for o in (2, 7)]
    for fmt, orientation in cases:
        data = encode(stored_image(orientation), fmt, orientation)
        upright = opencv(data)
        h, w = upright.shape[:2]
        boxes = np.array([[0, 0, w, h], [3, 5, w / 2, h / 3], [w - 9, h - 7, 12, 9]], np.float32)
        got = served_crops(sig, out_hw, image_bytes=tf.constant(data), boxes=tf.constant(boxes))
        want = np.stack([canonical_crop(upright, b, out_hw, 0.1) for b in boxes])
        worst = np.abs(got.astype(int) - want.astype(int)).max()
        assert worst <= 1, (fmt, orientation, worst)  # the resize may round differently
