"""Hostile images (`probe_image`, `load_image`) and boxes (`CropSequence`): correct handling, or an error
naming file, row and value."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import regions_frame

from cropclf.errors import ImageError
from cropclf.data.images import load_image, probe_image
from cropclf.data.labels import LabelMap

from hostile_inputs import (IMAGES, image_error, smooth)


@pytest.mark.parametrize("name", IMAGES)
def test_images(images, name):
    expected, path = IMAGES[name], images / name
    if isinstance(expected, tuple) and isinstance(expected[0], str):  # only decoding finds it
        assert probe_image(path) == (60, 90)
        with pytest.raises(ImageError, match=expected[1]):
            load_image(path)
        return
    if isinstance(expected, str):
        for fn in (probe_image, load_image):
            with pytest.raises(ImageError, match=expected):
                fn(path)
        return
    image = load_image(path)
    assert probe_image(path) == image.shape[:2] == expected
    assert image.dtype == np.uint8 and image.shape[2] == 3
    rgb = smooth(60, 90)
    reference = {"gray.png": np.repeat(rgb[..., 1:2], 3, axis=2),
                 "rotated.jpg": np.rot90(rgb, k=-1)}.get(name, rgb)
    tolerance = 4 if name.endswith(".jpg") else 0
    assert np.abs(image.astype(int) - reference).mean() <= tolerance



# ============================================================================ CropSequence

CROP_HW = (24, 40)
# (image, box x/y/w/h on it, None when the crop is used, else the reason it is left out)
SEQUENCE = {
    "inside": ("good.png", (10, 10, 30, 20), None),
    "partly_outside_padded": ("good.png", (-10, -5, 30, 30), None),
    "alpha_png": ("alpha.png", (10, 10, 30, 20), None),
    "grayscale": ("gray.png", (10, 10, 30, 20), None),
    "sixteen_bit": ("gray16.png", (10, 10, 30, 20), None),
    "cmyk": ("cmyk.jpg", (10, 10, 30, 20), None),
    "exif_rotated": ("rotated.jpg", (5, 50, 40, 35), None),  # only inside once rotated (60x90)
    "nan_box": ("good.png", (np.nan, 10, 30, 20), r"non-finite box \(.*nan.*10"),
    "infinite_box": ("good.png", (10, 10, np.inf, 20), r"non-finite box \(.*10.*inf"),
    "zero_area": ("good.png", (10, 10, 0, 20), r"box 0x20 px is smaller than min_size=2"),
    "negative_size": ("good.png", (10, 10, -5, 20), r"box -5x20 px is smaller than min_size"),
    "wholly_outside": ("good.png", (500, 10, 10, 10),
                       r"box \(500, 10, 10, 10\) lies wholly outside the 90x60 image"),
    "missing_image": ("missing.jpg", (1, 1, 9, 9), r"image missing or unreadable"),
    "zero_byte_image": ("empty.jpg", (1, 1, 9, 9), r"image missing or unreadable"),
    "truncated_jpeg": ("truncated.jpg", (1, 1, 9, 9), r"image missing or unreadable"),
    "text_named_jpg": ("text.jpg", (1, 1, 9, 9), r"image missing or unreadable"),
    "enormous_header": ("enormous.png", (1, 1, 9, 9), r"image missing or unreadable"),
    "truncated_png": ("truncated.png", (1, 1, 9, 9), r"image unreadable"),  # found decoding
}


def _sequence(images, cases):
    """A CropSequence over one region per case (in order) plus a good region, and its frame."""
    from cropclf.config import CropConfig
    from cropclf.data.sequence import CropSequence

    rows = [{"path": str(images / name), "x": x, "y": y, "width": w, "height": h, "name": "a",
             "type": "t"} for name, (x, y, w, h), _ in cases]
    rows.append({"path": str(images / "good.png"), "x": 40, "y": 20, "width": 20, "height": 20,
                 "name": "a", "type": "t"})
    frame = regions_frame(rows)
    maps = {"name": LabelMap("name", ["a"]), "type": LabelMap("type", ["t"])}
    return CropSequence(frame, maps, batch_size=8, crop=CropConfig(image_size=CROP_HW, margin=0.1),
                        progress=False), frame


@pytest.mark.parametrize("case", SEQUENCE)
def test_crop_sequence(images, case):
    from cropclf.data.crops import canonical_crop

    name, box, reason = SEQUENCE[case]
    seq, frame = _sequence(images, [SEQUENCE[case]])
    X, y = seq[0]
    assert X.shape == (len(seq.slots), *CROP_HW, 3) and np.isfinite(X).all()
    if reason is None:
        assert len(seq.slots) == 2 and seq.skipped == []
        ref = canonical_crop(load_image(images / name), box, CROP_HW, 0.1)
        assert np.abs(X[0] - ref).max() <= 1.0  # same pixels evaluation and serving crop
    else:
        assert len(seq.slots) == 1  # the good region still trains
        (problem,) = seq.skipped
        assert problem.file == str(images / name) and problem.row == "row 2"
        assert re.search(reason, problem.reason), problem.reason
        assert re.search(reason, seq.report().splitlines()[1])
        message = image_error(name)
        if message:  # the image's own error is kept, for the report
            assert re.search(message, seq.store.bad_images[str(images / name)])


def test_crop_sequence_lists_and_counts_every_left_out_region(images):
    cases = [c for c in SEQUENCE.values() if c[2] is not None]
    seq, frame = _sequence(images, cases)
    assert len(seq.slots) == 1 and len(seq.skipped) == len(cases)
    assert [p.row for p in seq.skipped] == [f"row {k + 2}" for k in range(len(cases))]
    assert seq.report().startswith(f"{len(cases)} region(s) left out, 1 used")
    assert len(seq.store.bad_images) == 6


def test_crop_sequence_leaves_out_boxes_far_larger_than_their_image(images):
    """Cutting them would take gigabytes (the window is padded in memory) for a crop of padding."""
    seq, _ = _sequence(images, [("good.png", (-1000, -1000, 2000, 2000), None)])
    assert len(seq.slots) == 1
    assert "is over 10 times as wide or tall as the 90x60 image" in seq.skipped[0].reason
