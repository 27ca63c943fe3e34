"""Property-based tests: any text fed to the reader parses or raises the project's own error, and
any box on any small image is cropped to the requested shape or reported as left out."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import regions_frame, write_image
from fixtures_via import VIA_HEADER, csv_row, via_json, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cropclf import read_annotations
from cropclf.via.frame import FIXED_COLUMNS
from cropclf.via.shapes import MAX_COORDINATE, SHAPE_KEYS
from cropclf.errors import CropclfError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One folder for every example (hypothesis cannot use function-scoped ``tmp_path``)."""
    return tmp_path_factory.mktemp("properties")


def read_or_refuse(path):
    """``read_annotations``: a frame, or ``None`` when it raised the project's own error."""
    try:
        frame = read_annotations(path)
    except CropclfError as e:
        assert str(e).startswith(str(path)), e  # every message names the file first
        return None
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:len(FIXED_COLUMNS)]) == list(FIXED_COLUMNS)
    box = frame[["x", "y", "width", "height"]].to_numpy(float)
    assert np.isfinite(box).all() and (box[:, 2:] >= 0).all()
    assert (np.abs(box) <= 2 * MAX_COORDINATE).all()  # a polygon spans at most twice the limit
    return frame


# ============================================================================ the reader, on noise

# Fragments of VIA files, so that random text reaches past the first check now and then.
TOKENS = [VIA_HEADER, "#" + VIA_HEADER, "\n", "\r\n", ",", '"', '""', "{", "}", "[", "]", ":",
          "{}", '"{}"', "x.jpg", "../x.jpg", "/abs.jpg", "file:///x.jpg", "http://[::1", "100",
          "-1", "0", "1", "1e999", "NaN", "Infinity", "undefined", "null", "true", "'", "name",
          '""name""', '""rect""', '""x""', '""all_points_x""', "rect", "polygon", "point",
          "circle", "ellipse", "theta", "region_shape_attributes", "filename", "regions",
          '"filename"', '"regions"', "_via_img_metadata", "shape_attributes",
          "region_attributes", "\ufeff", "\x00", "é", "猫", " ", "\\", "\\u0000", "\\ud800",
          "__import__('os')", "9" * 40]
noise = st.one_of(st.text(max_size=300),
                  st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))


@settings(max_examples=400, **SETTINGS)
@given(text=noise, suffix=st.sampled_from([".csv", ".json"]))
def test_any_text_parses_or_raises_our_error(folder, text, suffix):
    read_or_refuse(write(folder, "noise" + suffix, text))


@settings(max_examples=200, **SETTINGS)
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".json"]))
def test_any_bytes_parse_or_raise_our_error(folder, data, suffix):
    read_or_refuse(write(folder, "bytes" + suffix, data))


# ============================================================================ structured fuzz

# Hostile values (NaN, infinities, huge, text, null, booleans) among plain coordinates.
hostile = st.one_of(
    st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e6, 1e6 + 1, -1e308, 1e308, 2**63]),
    st.sampled_from(["12", "1e3", "ten", "", " 5 ", "nan", "inf", "1e999"]),
    st.none(), st.booleans())
plain = st.one_of(st.integers(-500, 500), st.floats(-500, 500))


def mostly(usual, rare, odds=8):
    """``usual`` ``odds`` times in ``odds + 1`` (``one_of`` would pick ``rare`` half the time)."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: usual if ok else rare)


numbers = mostly(plain, hostile)  # mostly plain, so that many files parse
json_values = st.recursive(
    st.one_of(hostile, st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8)
real_names = st.sampled_from(sorted(SHAPE_KEYS))
shape_names = mostly(real_names, st.one_of(st.text(max_size=8), hostile))


@st.composite
def shapes(draw):
    """A shape dict with a random (mostly real) name, its keys (or some), and random values."""
    name = draw(shape_names)
    keys = list(SHAPE_KEYS.get(name, ())) if isinstance(name, str) else []
    if keys and draw(mostly(st.just(False), st.just(True))):
        keys = draw(st.lists(st.sampled_from(keys), unique=True))
    shape = {"name": name}
    n_points = draw(st.integers(1, 5))
    for key in keys:
        if key.startswith("all_points"):  # usually as many x as y
            shape[key] = draw(mostly(st.lists(numbers, min_size=n_points, max_size=n_points),
                                     st.one_of(st.lists(numbers, max_size=5), numbers)))
        else:
            shape[key] = draw(numbers)
    if name == "ellipse" and draw(st.booleans()):
        shape["theta"] = draw(numbers)
    junk = draw(mostly(st.just(None), st.sampled_from(["other", "extra keys"])))
    if junk == "other":
        return draw(json_values)  # not a shape at all
    if junk == "extra keys":
        return {**draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3)), **shape}
    return shape


objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
cells = mostly(objects, json_values)
regions = st.lists(st.tuples(shapes(), cells), max_size=4)


def dumps(value) -> str:
    """JSON as VIA writes it, NaN and Infinity included (Python's json reads them back)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=True, ensure_ascii=False)


@settings(max_examples=400, **SETTINGS)
@given(regions=regions, file_attrs=cells, filename=st.sampled_from(["a.jpg", "sub/b c.png"]),
       region_id=st.one_of(st.integers(-5, 5), st.integers(-10**40, 10**40)))
def test_via_csv_with_random_cells(folder, regions, file_attrs, filename, region_id):
    lines = [VIA_HEADER] + [csv_row(filename, dumps(file_attrs), len(regions), region_id + i,
                                    dumps(shape), dumps(attrs)) for i, (shape, attrs) in
                            enumerate(regions)]
    read_or_refuse(write(folder, "fuzz.csv", "\n".join(lines)))


@settings(max_examples=300, **SETTINGS)
@given(regions=regions, file_attrs=cells, v1=st.booleans())
def test_via_json_with_random_regions(folder, regions, file_attrs, v1):
    images = [("a.jpg", file_attrs, regions), ("b.jpg", {}, [])]
    text = dumps(via_json(images, v1=v1))
    read_or_refuse(write(folder, "fuzz.json", text))


labels = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
coordinates = st.integers(-MAX_COORDINATE, MAX_COORDINATE)


@settings(max_examples=150, **SETTINGS)
@given(boxes=st.lists(st.tuples(coordinates, coordinates, st.integers(0, 5000),
                                st.integers(0, 5000), labels), min_size=1, max_size=5))
def test_valid_rects_and_any_labels_read_back_exactly(folder, boxes):
    """Labels with commas, quotes, newlines or any script survive CSV and JSON alike."""
    found = [((x, y, w, h), {"name": "rect", "x": x, "y": y, "width": w, "height": h},
              {"name": label}) for x, y, w, h, label in boxes]
    lines = [VIA_HEADER] + [csv_row("a.jpg", {}, len(found), i, s, a)
                            for i, (_, s, a) in enumerate(found)]
    export = via_json([("a.jpg", {}, [(s, a) for _, s, a in found])])
    for path in (write(folder, "good.csv", "\n".join(lines)), write(folder, "good.json", export)):
        frame = read_annotations(path)
        assert [tuple(b) for b in frame[["x", "y", "width", "height"]].to_numpy()] == [
            b for b, _, _ in found]
        assert frame["name"].tolist() == [label.strip() for *_, label in boxes]


# ============================================================================ crops

finite = st.floats(-3, 3, allow_nan=False)  # in units of the image's size


@st.composite
def scenes(draw):
    """A small image (sometimes grey) and boxes anywhere on, around or off it."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    specials = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])
    coordinate = st.one_of(finite, specials)
    boxes = draw(st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate),
                          min_size=1, max_size=6))
    scaled = [(x * w, y * h, bw * w, bh * h) for x, y, bw, bh in boxes]
    grey = draw(st.booleans())
    return h, w, grey, scaled


@settings(max_examples=150, **SETTINGS)
@given(scene=scenes(), out_h=st.integers(8, 24), out_w=st.integers(8, 24),
       margin=st.floats(0, 2), mode=st.sampled_from(["stretch", "letterbox"]),
       pad_value=st.integers(0, 255), min_size=st.floats(0, 4), augment=st.booleans(),
       seed=st.integers(0, 2**16))
def test_any_box_is_cropped_or_left_out(folder, scene, out_h, out_w, margin, mode, pad_value,
                                        min_size, augment, seed):
    from cropclf.config import AugmentConfig, CropConfig
    from cropclf.data.labels import LabelMap
    from cropclf.data.sequence import CropSequence

    h, w, grey, boxes = scene
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    path = str(write_image(folder / "scene.png", image))
    frame = regions_frame([{"path": path, "x": x, "y": y, "width": bw, "height": bh, "name": "a",
                            "type": "t"} for x, y, bw, bh in boxes])
    maps = {"name": LabelMap("name", ["a"]), "type": LabelMap("type", ["t"])}
    crop = CropConfig(image_size=(out_h, out_w), margin=margin, resize=mode, pad_value=pad_value,
                      min_size=min_size)
    seq = CropSequence(frame, maps, batch_size=4, crop=crop,
                       augment=AugmentConfig(rotate=0) if augment else False, seed=seed,
                       progress=False)

    # Every region is used or listed with its reason, never both, never neither.
    used, skipped = set(seq.index), {p.label for p in seq.skipped}
    assert used.isdisjoint(skipped) and used | skipped == set(frame.index)
    assert all(p.reason and p.row for p in seq.skipped)
    for label in used:
        x, y, bw, bh = frame.loc[label, ["x", "y", "width", "height"]]
        assert np.isfinite([x, y, bw, bh]).all() and bw >= min_size and bh >= min_size
        assert x < w and y < h and x + bw > 0 and y + bh > 0  # touches the image
    for i in range(len(seq)):
        X, y = seq[i]
        assert X.shape == (min(4, len(used) - 4 * i), out_h, out_w, 3) and X.dtype == np.float32
        assert np.isfinite(X).all() and X.min() >= 0 and X.max() <= 255
        assert set(y) == {"name", "type"} and y["name"].shape == (len(X), 1)
