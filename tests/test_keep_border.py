"""augment.keep_border: box jitter leaves the image border where the served (canonical) crop shows it."""

import numpy as np
import pandas as pd
import pytest

from cropclf.config import AugmentConfig, CropConfig
from cropclf.data.crops import expand_box, integer_window, jitter_reach, jitter_window, keep_border
from cropclf.data.labels import build_label_maps
from cropclf.data.sequence import CropSequence

IMAGE_HW = (60, 100)


def _window(box, margin=0.15):
    x0, y0, x1, y1 = integer_window(expand_box(box, margin))
    return np.array([x0, y0, x1 - x0, y1 - y0], np.float64)


@pytest.mark.parametrize("box", [(0, 20, 30, 20), (1, 0, 30, 20), (70, 40, 30, 20), (60, 35, 40, 25),
                                 (3, 20, 30, 20)])  # touching left, left+top, right, right+bottom, near left
def test_the_fraction_beyond_each_crossed_edge_is_kept(box):
    window = _window(box)
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = keep_border(jitter_window(window, rng, 0.08, 0.15), window, IMAGE_HW)
        for axis, size in ((0, IMAGE_HW[1]), (1, IMAGE_HW[0])):
            a, n = window[axis], window[axis + 2]
            if a < 0:
                assert out[axis] / out[axis + 2] == pytest.approx(a / n)
            if a + n > size:
                assert (out[axis] + out[axis + 2] - size) / out[axis + 2] == pytest.approx((a + n - size) / n)


def test_a_window_inside_the_image_stays_inside_and_moves_no_further_than_the_jitter_reaches():
    window = _window((10, 8, 30, 20))  # its margin window is inside the 100x60 image
    assert window[0] >= 0 and window[1] >= 0 and window[0] + window[2] <= 100 and window[1] + window[3] <= 60
    rng = np.random.default_rng(1)
    reach = jitter_reach(0.3, 0.3)
    for _ in range(500):
        jittered = jitter_window(window, rng, 0.3, 0.3)
        out = keep_border(jittered, window, IMAGE_HW)
        assert out[0] >= 0 and out[1] >= 0 and out[0] + out[2] <= 100 + 1e-9 and out[1] + out[3] <= 60 + 1e-9
        np.testing.assert_allclose(out[2:], jittered[2:])  # sizes kept
        lo, hi = window[:2] - reach * window[2:], window[:2] + (1 + reach) * window[2:]
        assert np.all(out[:2] >= lo - 1e-9) and np.all(out[:2] + out[2:] <= hi + 1e-9)


def test_an_axis_crossing_both_edges_is_not_jittered():
    window = _window((0, 10, 100, 20))
    out = keep_border(np.array([-30.0, 5, 150, 28]), window, IMAGE_HW)
    np.testing.assert_allclose(out[[0, 2]], window[[0, 2]])
    np.testing.assert_allclose(out[[1, 3]], [5, 28])


@pytest.mark.parametrize("keep", [False, True, "default"])
def test_training_crops_of_a_box_on_the_border_show_the_served_band(tmp_path, keep):
    import cv2

    path = tmp_path / "white.png"
    cv2.imwrite(str(path), np.full((60, 100, 3), 255, np.uint8))
    frame = pd.DataFrame({"path": [str(path)] * 2, "x": [0.0, 50.0], "y": [20.0, 20.0], "width": [40.0, 40.0],
                          "height": [20.0, 20.0], "name": ["a", "b"], "type": ["u", "v"]})
    maps = build_label_maps(frame, ("name", "type"))
    crop = CropConfig(image_size=(16, 40), margin=0.25)
    aug = AugmentConfig(hflip=0, rotate=0, color=0, blur=0,
                        **({} if keep == "default" else {"keep_border": keep}))  # default: on
    seq = CropSequence(frame, maps, 2, crop, aug, seed=0, progress=False, shuffle=False)
    served = CropSequence(frame, maps, 2, crop, False, progress=False).crops([0])[0]
    band = int((served[8, :, 0] < 128).sum())  # 10 of 60 window px beyond the edge: 40 * 10 / 60 px
    assert band == round(40 * 10 / 60)
    bands = {int((seq.crops([0], epoch=e)[0][8, :, 0] < 128).sum()) for e in range(30)}
    if keep:
        assert bands <= {band - 1, band, band + 1}  # the same fraction of a rescaled window: +-1 px rounding
    else:
        assert len(bands) > 3  # the unpinned jitter moves the border: the defect keep_border removes
