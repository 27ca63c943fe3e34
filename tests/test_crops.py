import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cropclf.data.crops import (canonical_crop, cut_window, expand_box, fit_size, integer_window, jitter_window,
                           jitter_reach, output_to_source)

IMAGE = np.arange(37 * 53 * 3, dtype=np.uint32).reshape(37, 53, 3).astype(np.uint8)  # non-square


@pytest.mark.parametrize("box, margin, expected", [
    ((10, 20, 30, 40), 0.0, (10, 20, 30, 40)),
    ((10, 20, 30, 40), 0.5, (-5, 0, 60, 80)),
    ((0, 0, 1, 1), 1.0, (-1, -1, 3, 3)),
])
def test_expand_box(box, margin, expected):
    np.testing.assert_allclose(expand_box(box, margin), expected)


@pytest.mark.parametrize("box, window", [
    ((10, 20, 30, 40), (10, 20, 40, 60)),
    ((10.2, 20.7, 1.1, 0.1), (10, 20, 12, 21)),
    ((-3.5, -1, 2, 0), (-4, -1, -1, 0)),
])
def test_integer_window(box, window):
    assert integer_window(box) == window


@pytest.mark.parametrize("window", [(-5, -5, 10, 10), (40, 30, 60, 45), (100, 100, 110, 120), (0, 0, 53, 37)])
def test_cut_window_pads_outside(window):
    out = cut_window(IMAGE, window, pad_value=7)
    x0, y0, x1, y1 = window
    assert out.shape == (y1 - y0, x1 - x0, 3)
    for yy in range(y0, y1, 3):
        for xx in range(x0, x1, 3):
            inside = 0 <= xx < 53 and 0 <= yy < 37
            expected = IMAGE[yy, xx] if inside else 7
            np.testing.assert_array_equal(out[yy - y0, xx - x0], expected)


def test_letterbox_keeps_aspect():
    img = np.full((20, 80, 3), 200, np.uint8)
    out = canonical_crop(img, (0, 0, 80, 20), (32, 32), margin=0, mode="letterbox", pad_value=0)
    rows = np.flatnonzero(out[:, 16, 0] > 0)
    assert out.shape == (32, 32, 3) and len(rows) == fit_size((20, 80), (32, 32), "letterbox")[0] == 8
    assert out[0, 0, 0] == 0 and out[16, 16, 0] == 200


def test_output_to_source_maps_corners():
    m = output_to_source((10, 20, 30, 40), (4, 3))
    # output pixel (0, 0) centre samples source index of the window's first cell centre
    np.testing.assert_allclose(m @ [0, 0, 1], [10 + 5 - 0.5, 20 + 5 - 0.5])
    np.testing.assert_allclose(m @ [2, 3, 1], [10 + 25 - 0.5, 20 + 35 - 0.5])


def test_jitter_is_bounded_by_reach():
    # the sequence jitters the whole-pixel margin window; jitter_reach bounds how far its edges move
    rng = np.random.default_rng(0)
    box, margin, shift, scale = np.array([100.3, 50.6, 40.2, 20.7]), 0.15, 0.1, 0.2
    x0, y0, x1, y1 = integer_window(expand_box(box, margin))
    window = np.array([x0, y0, x1 - x0, y1 - y0], float)
    reach = jitter_reach(shift, scale) * window[2:]
    for _ in range(500):
        x, y, w, h = jitter_window(window, rng, shift, scale)
        assert x >= x0 - reach[0] - 1e-9 and y >= y0 - reach[1] - 1e-9
        assert x + w <= x1 + reach[0] + 1e-9 and y + h <= y1 + reach[1] + 1e-9


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-500, 500), y=st.floats(-500, 500), w=st.floats(0, 800), h=st.floats(0, 800),
       margin=st.floats(0, 2), ih=st.integers(1, 60), iw=st.integers(1, 60), oh=st.integers(8, 40),
       ow=st.integers(8, 40), mode=st.sampled_from(["stretch", "letterbox"]))
def test_any_box_any_image_gives_requested_shape(x, y, w, h, margin, ih, iw, oh, ow, mode):
    image = np.full((ih, iw, 3), 255, np.uint8)
    out = canonical_crop(image, (x, y, w, h), (oh, ow), margin, mode, pad_value=0)
    assert out.shape == (oh, ow, 3) and out.dtype == np.uint8
    outside = x >= iw or y >= ih or x + w * (1 + margin) < -margin * w or y + h * (1 + margin) < -margin * h
    if outside and (x - margin * w >= iw or y - margin * h >= ih):
        assert out.max() == 0  # wholly outside: all padding


# Sharp black/white noise (37x53, non-square): any off-by-one in the crop moves whole 0/255 steps.
SHARP = (np.random.default_rng(7).integers(0, 2, (37, 53, 3)) * 255).astype(np.uint8)


def padded(image, x0, y0, x1, y1, pad):
    """The window ``[x0, x1) x [y0, y1)`` of ``image``, pixel by pixel, ``pad`` outside it."""
    h, w = image.shape[:2]
    out = np.full((y1 - y0, x1 - x0, 3), pad, np.uint8)
    for yy in range(y0, y1):
        for xx in range(x0, x1):
            if 0 <= yy < h and 0 <= xx < w:
                out[yy - y0, xx - x0] = image[yy, xx]
    return out


@pytest.mark.parametrize("box", [
    (-3, 6, 10, 8),     # partly outside the left edge
    (7, -5, 10, 8),     # partly outside the top edge
    (-3, -5, 10, 8),    # across the top-left corner
    (-0.5, -0.5, 4, 3),  # half a pixel outside: the window snaps out to a whole padded column/row
    (-1, -1, 60, 45),   # larger than the image, outside on every side
    (-10, 4, 10, 8),    # wholly outside, touching the left edge
    (4, -8, 10, 8),     # wholly outside, touching the top edge
    (-40, -30, 10, 8),  # wholly outside, up and to the left
])
def test_crop_beyond_left_and_top_edges_is_exact(box):
    # margin 0 and an output the window's size: no resampling, every pixel is known exactly.
    x0, y0, x1, y1 = integer_window(box)
    out = canonical_crop(SHARP, box, (y1 - y0, x1 - x0), margin=0, pad_value=7)
    np.testing.assert_array_equal(out, padded(SHARP, x0, y0, x1, y1, 7))
    assert (out == 7).any() and ((out == 7).all() == (x1 <= 0 or y1 <= 0))


def test_area_shrunk_crop_beyond_left_and_top_edges_is_exact():
    # 2x2 constant blocks, box grown by margin 0.25 to the even window [-6, 6) x [-8, 10): a 2x area
    # shrink averages each block (or padding) exactly, so every output pixel is known.
    blocks = (np.random.default_rng(3).integers(0, 2, (19, 27, 3)) * 255).astype(np.uint8)
    image = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)[:37, :53]
    box = (-4, -5, 8, 12)
    assert integer_window(expand_box(box, 0.25)) == (-6, -8, 6, 10)
    out = canonical_crop(image, box, (9, 6), margin=0.25, pad_value=7)
    expected = padded(image, -6, -8, 6, 10, 7)[::2, ::2]
    np.testing.assert_array_equal(out, expected)
    assert (out[:4] == 7).all() and (out[:, :3] == 7).all() and (out[4:, 3:] == blocks[:5, :3]).all()


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_crop_wholly_outside_left_or_top_is_all_padding(mode):
    for box in [(-30.5, 10, 12, 9), (10, -25.25, 12, 9), (-100, -100, 50, 20)]:
        out = canonical_crop(SHARP, box, (16, 24), margin=0.15, mode=mode, pad_value=7)
        assert out.shape == (16, 24, 3) and (out == 7).all(), box


@pytest.mark.parametrize("box, kind", [
    ((10, 10, 20, 12), None),
    ((float("nan"), 10, 20, 12), "non_finite"),
    ((10, 10, 0, 12), "zero_area"),
    ((10, 10, 1.5, 12), "too_small"),
    ((10, 10, -5, 12), "too_small"),
    ((90, 10, 20, 12), "outside_image"),   # x == width: no pixel inside
    ((-20, 10, 20, 12), "outside_image"),  # ends exactly at the left edge
    ((-500, -5, 901, 12), "oversized"),    # over 10 times the 90 px width
    ((-450, -5, 900, 12), None),           # exactly 10 times: still cropped (mostly padding)
])
def test_why_not_croppable_is_the_one_rule(box, kind):
    from cropclf.data.crops import why_not_croppable

    why = why_not_croppable(box, (60, 90), min_size=2.0)
    assert (why and why[0]) == kind, why
    if kind:
        assert "box" in why[1]


def test_why_not_croppable_without_the_image_checks_the_box_only():
    from cropclf.data.crops import why_not_croppable

    assert why_not_croppable((-500, -500, 10, 10), None, 2.0) is None
    assert why_not_croppable((0, 0, 1, 10), None, 2.0)[0] == "too_small"


@pytest.mark.parametrize("mode, expected", [("stretch", (10, 7.5, 30, 22.5)), ("letterbox", (10, 10, 30, 20))])
def test_box_in_crop_is_where_canonical_crop_puts_the_box(mode, expected):
    from cropclf.data.crops import box_in_crop

    # a 20x10 box grown by half its size per side: a 40x20 window, resized into 30x40
    assert box_in_crop((5, 5, 20, 10), (30, 40), 0.5, mode) == pytest.approx(expected)
    # and the pixels agree: a white box on black comes out white exactly there (sharp edges)
    image = np.zeros((40, 50, 3), np.uint8)
    image[5:15, 5:25] = 255
    crop = canonical_crop(image, (5, 5, 20, 10), (30, 40), 0.5, mode)
    x0, y0, x1, y1 = (int(v) for v in np.round(expected))
    assert crop[(y0 + y1) // 2, (x0 + x1) // 2].min() == 255
    assert crop[max(y0 - 2, 0), (x0 + x1) // 2].max() < 255 and crop[(y0 + y1) // 2, max(x0 - 2, 0)].max() < 255
