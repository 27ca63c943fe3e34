"""Hostile input: every bad input gets correct handling or an error naming file, row and value.

Tables of bad inputs fed to the reader (`read_annotations`), the image loader (`probe_image`,
`load_image`) and `CropSequence`, then a representative subset fed to every script, which must
print one ``error:`` line per problem and exit non-zero, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, read_json, regions_frame, write_image
from fixtures_via import VIA_HEADER, cell, csv_row, via_json, write
from PIL import Image

from cropclf import read_annotations
from cropclf.errors import AnnotationError, ImageError, LabelError
from cropclf.data.images import load_image, probe_image
from cropclf.data.labels import LabelMap, label_maps_to_json, load_label_maps

RECT = {"name": "rect", "x": 10, "y": 20, "width": 30, "height": 40}
CANARY = "__import__('pathlib').Path('CANARY').touch()"  # must never run
ODD_LABELS = ["zebra, striped", 'say "hi"', "猫 ねこ", "Ωμέγα"]


def one_region(shape=RECT, attrs=None, file_attrs=None, filename="x.jpg", region_id=0, count=1):
    """A VIA 2 CSV with one region; cells may be dicts or raw cell text."""
    return VIA_HEADER + "\n" + csv_row(filename, {} if file_attrs is None else file_attrs, count,
                                       region_id, shape, {"name": "a"} if attrs is None else attrs)


def rect(**values):
    return {**RECT, **values}


def raw_rect(field, text):
    """A rect shape cell whose ``field`` is the raw JSON ``text`` (NaN, 1e400, ...)."""
    pairs = [f'"{k}":{text if k == field else json.dumps(v)}' for k, v in RECT.items()]
    return "{" + ",".join(pairs) + "}"


def boxes(df):
    return [tuple(r) for r in df[["x", "y", "width", "height"]].itertuples(index=False)]


# ============================================================================ the reader

# (content, file name, expected): a regex the AnnotationError must match, or a check of the frame.
READER = {
    # malformed JSON in any cell, or in the whole file
    "malformed_shape_cell": (one_region('{"name":"rect","x":1'),
                             r"via\.csv, row 2: region_shape_attributes is not valid JSON at "
                             r"line 1 column 21\..*Received: \{\"name\":\"rect\",\"x\":1$"),
    "malformed_region_attributes": (one_region(attrs='{"name":"cat"'),
                                    r"via\.csv, row 2: region_attributes is not valid JSON"),
    "malformed_file_attributes": (one_region(file_attrs='{"caption":'),
                                  r"via\.csv, row 2: file_attributes is not valid JSON"),
    "malformed_json_file": ('{"a.jpg1": {"filename": "a.jpg", "regions": [}}',
                            r"via\.csv: the JSON file is not valid JSON at line 1 column 46"),
    "json_nested_too_deeply": ('{"a":' * 100_000 + "1" + "}" * 100_000,
                               r"via\.csv: the JSON file is not valid JSON \(nested too deeply\)"),
    "number_with_5000_digits": (one_region('{"name":"rect","x":' + "9" * 5000 + "}"),
                                r"row 2: region_shape_attributes is not valid JSON \(a number has "
                                r"more than 4,300 digits\)"),
    # a Python expression or literal instead of JSON: refused, never evaluated
    "python_expression_cell": (one_region(CANARY),
                               r"row 2: region_shape_attributes is not valid JSON.*Received: "
                               r"__import__\('pathlib'\)"),
    "python_dict_cell": (one_region("{'name': 'rect', 'x': 1}"),
                         r"row 2: region_shape_attributes is not valid JSON.*It looks like Python"),
    "python_expression_file": (CANARY, r"via\.csv, row 1: missing column\(s\) \['filename', "
                                       r"'region_shape_attributes'\]"),
    # unknown shapes
    "unknown_shape_name": (one_region({"name": "square", "x": 1}),
                           r"row 2: unknown shape name 'square'; expected one of rect, circle, "
                           r"ellipse, polygon, polyline, point\..*Received: \{\"name\":\"square\""),
    "shape_without_name": (one_region({"x": 1, "y": 2}), r"row 2: unknown shape name None"),
    "shape_missing_keys": (one_region({"name": "rect", "x": 1}),
                           r"row 2: the rect shape lacks \['y', 'width', 'height'\]"),
    # missing or extra columns and fields
    "missing_shape_column": ("filename,name\nx.jpg,cat\n",
                             r"row 1: missing column\(s\) \['region_shape_attributes'\]; found "
                             r"\['filename', 'name'\]"),
    "missing_filename_column": ("name,region_shape_attributes\ncat," + cell(RECT),
                                r"row 1: missing column\(s\) \['filename'\]"),
    "extra_field_in_row": (one_region() + ",surplus",
                           r"row 2: expected 7 fields, found 8\..*Received: x\.jpg,100,"),
    "missing_field_in_row": (VIA_HEADER + "\nx.jpg,100,{},1,0," + cell(RECT),
                             r"row 2: expected 7 fields, found 6"),
    "comma_in_filename": (VIA_HEADER + "\n" + csv_row("a,b.jpg", {}, 1, 0, RECT, {}),
                          r"row 2: expected 7 fields, found 8\. A comma or quote in a file name"),
    # NaN, infinite, negative, enormous and non-numeric coordinates
    "nan_coordinate": (one_region(raw_rect("x", "NaN")),
                       r"row 2: coordinate 'x' of the rect shape is not finite.*Received: x=nan"),
    "infinite_coordinate": (one_region(raw_rect("width", "Infinity")),
                            r"row 2: coordinate 'width' .* not finite.*Received: width=inf"),
    "overflowing_coordinate": (one_region(raw_rect("y", "1e400")),
                               r"row 2: coordinate 'y' .* not finite.*Received: y=inf"),
    "enormous_coordinate": (one_region(rect(x=1e300)),
                            r"row 2: coordinate 'x' of the rect shape is enormous \(beyond "
                            r"\+/-1,000,000 px.*Received: x=1e\+300"),
    "enormous_integer": (one_region(raw_rect("height", "9" * 400)),
                         r"row 2: coordinate 'height' .* is enormous.*Received: height=9999"),
    "enormous_polygon": (one_region({"name": "polygon", "all_points_x": [-1e308, 1e308],
                                     "all_points_y": [0, 1]}),
                         r"row 2: coordinate 'all_points_x' of the polygon shape is enormous"),
    "text_coordinate": (one_region(rect(x="ten")),
                        r"row 2: coordinate 'x' of the rect shape is not a number.*x='ten'"),
    "null_coordinate": (one_region(rect(y=None)), r"coordinate 'y' .* not a number.*y=None"),
    "boolean_coordinate": (one_region(rect(width=True)), r"'width' .* not a number.*width=True"),
    "list_coordinate": (one_region(rect(x=[1])), r"'x' .* not a number.*x=\[1\]"),
    "negative_coordinates": (one_region(rect(x=-5, y=-3)), [(-5, -3, 30, 40)]),
    "negative_size_flips": (one_region(rect(width=-4, height=-6)), [(6, 14, 4, 6)]),
    "numeric_text_coordinate": (one_region(rect(x="12.5")), [(12.5, 20, 30, 40)]),
    "huge_region_id": (one_region(region_id=10**30),
                       r"row 2: region_id is far too large.*Received: 1000000000000000000000"),
    "text_region_id": (one_region(region_id="zero"), r"row 2: region_id must be an integer"),
    # zero-area and wholly-outside boxes are read as drawn; cropping leaves them out (below)
    "zero_area_box": (one_region(rect(width=0)), [(10, 20, 0, 40)]),
    "point": (one_region({"name": "point", "cx": 3, "cy": 4}), [(3, 4, 0, 0)]),
    "wholly_outside_box": (one_region(rect(x=5000, y=5000)), [(5000, 5000, 30, 40)]),
    # non-UTF-8 text, empty files, a header with no rows, unpaired surrogates
    "latin1_bytes": ((VIA_HEADER + "\n").encode() + "caf\xe9.jpg,1".encode("latin-1"),
                     rf"via\.csv: byte {len(VIA_HEADER) + 4} is not UTF-8\. Re-save the file as "
                     r"UTF-8.*Received: b'.*caf\\xe9"),
    "utf16_file": (VIA_HEADER.encode("utf-16"), r"via\.csv: byte 0 is not UTF-8"),
    "empty_file": (b"", r"via\.csv: the file is empty\. Export the annotations again\."),
    "blank_file": (b"  \r\n\n", r"via\.csv: the file is empty"),
    "only_commas": (",,,\n,,\n", r"via\.csv: the file holds only commas and blanks"),
    "header_only": (VIA_HEADER, []),
    "lone_surrogate_label": (one_region(attrs='{"name":"\\ud800"}'),
                             r"row 2: region_attributes holds an unpaired UTF-16 surrogate"),
    "not_via_json": ("[1, 2, 3]", r"via\.csv: expected a JSON object keyed by image"),
    "json_regions_not_a_list": ('{"k": {"filename": "a.jpg", "regions": 5}}',
                                r"image 'a\.jpg': 'regions' must be a list or an object"),
    # file names that climb out of the image folder
    "climbing_filename": (one_region(filename="../secret.jpg"),
                          r"via\.csv, row 2: image file name '\.\./secret\.jpg' points outside the "
                          r"image folder .*allow paths outside the root\. Received: \.\./secret"),
    "deep_climbing_filename": (one_region(filename="sub/../../../x.jpg"),
                               r"row 2: image file name 'sub/\.\./\.\./\.\./x\.jpg' points"),
    "absolute_filename": (one_region(filename="/etc/passwd.jpg"),
                          r"row 2: image file name '/etc/passwd\.jpg' points outside"),
}


@pytest.mark.parametrize("case", READER)
def test_reader(tmp_path, monkeypatch, case):
    content, expected = READER[case]
    monkeypatch.chdir(tmp_path)  # where the canary would land
    path = write(tmp_path, "via.csv", content)
    if isinstance(expected, str):
        with pytest.raises(AnnotationError, match=expected):
            read_annotations(path)
    else:
        df = read_annotations(path)
        assert len(df) == len(expected)
        if expected:
            np.testing.assert_allclose(boxes(df), expected)
        assert df[["x", "y", "width", "height"]].map(np.isfinite).all().all()
    assert not (tmp_path / "CANARY").exists()


def test_python_in_a_json_file_is_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    canary = CANARY.replace("'CANARY'", repr(str(tmp_path / "CANARY")))
    for text in (canary, "{" + canary + "}", '{"k": ' + canary + "}",
                 json.dumps(via_json(), separators=(",", ":")).replace('"cat"', canary)):
        with pytest.raises(AnnotationError, match=r"is not valid JSON|missing column"):
            read_annotations(write(tmp_path, "via.json", text))
    with pytest.raises(AnnotationError, match="not valid JSON"):
        read_annotations(write(tmp_path, "via.csv", one_region(attrs={"name": "a"},
                                                               file_attrs=canary)))
    assert not (tmp_path / "CANARY").exists()


def test_extra_columns_become_attributes(tmp_path):
    text = (VIA_HEADER + ",reviewer\n"
            + csv_row("x.jpg", {}, 1, 0, RECT, {"name": "cat"}) + ",ann")
    df = read_annotations(write(tmp_path, "via.csv", text))
    assert df.attrs["format"] == "flat_csv"
    assert df[["name", "reviewer"]].values.tolist() == [["cat", "ann"]]


def test_missing_label_column_reads_with_no_labels(tmp_path):
    """Without region_attributes the file is a flat CSV with no labels; training then names it."""
    from cropclf.data.labels import head_column

    text = VIA_HEADER.removesuffix(",region_attributes") + "\nx.jpg,100,{},1,0," + cell(RECT)
    df = read_annotations(write(tmp_path, "via.csv", text))
    assert df.attrs["format"] == "flat_csv" and df.attrs["region_attributes"] == []
    with pytest.raises(LabelError, match=r"via\.csv: no attribute 'name' to use as a head"):
        head_column(df, "name")


def test_climbing_filenames_are_read_when_allowed(tmp_path):
    root = tmp_path / "root"
    for name in ("../secret.jpg", "/etc/passwd.jpg"):
        df = read_annotations(write(root, "via.csv", one_region(filename=name)),
                              allow_outside_root=True)
        assert df["path"][0] == os.path.normpath(root / name)


def test_duplicate_regions_are_flagged_and_counted(tmp_path):
    lines = [VIA_HEADER, *(csv_row("x.jpg", {}, 3, i, RECT, {"name": "a"}) for i in range(2)),
             csv_row("x.jpg", {}, 3, 2, RECT, {"name": "b"})]
    df = read_annotations(write(tmp_path, "via.csv", "\n".join(lines)))
    assert df["duplicate"].tolist() == [False, True, False]
    assert df.attrs["duplicate_regions"] == 1


def test_labels_with_commas_quotes_and_non_latin_characters(tmp_path):
    images = [("猫.jpg", {"caption": "naïve, \"quoted\""},
               [(rect(x=k), {"name": label, "type": label}) for k, label in enumerate(ODD_LABELS)])]
    lines = [VIA_HEADER, *(csv_row("猫.jpg", images[0][1], 4, k, s, a)
                           for k, (s, a) in enumerate(images[0][2]))]
    from_csv = read_annotations(write(tmp_path, "via.csv", "\n".join(lines)))
    from_json = read_annotations(write(tmp_path, "via.json", via_json(images)))
    flat = "filename,name,region_shape_attributes\n" + "\n".join(
        f'猫.jpg,"{label.replace(chr(34), chr(34) * 2)}",{cell(rect(x=k))}'
        for k, label in enumerate(ODD_LABELS))
    from_flat = read_annotations(write(tmp_path, "flat.csv", flat))
    for df in (from_csv, from_json, from_flat):
        assert df["name"].tolist() == ODD_LABELS
        assert df["path"].tolist() == [str(tmp_path / "猫.jpg")] * 4
    assert from_csv["file:caption"][0] == 'naïve, "quoted"'
    maps = {"name": LabelMap.from_frame(from_csv, "name")}
    path = write(tmp_path, "labels.json", label_maps_to_json(maps))
    assert load_label_maps(path)["name"].classes == sorted(ODD_LABELS)


def test_a_label_training_never_saw(tmp_path):
    known = LabelMap("name", ["cat", "dog"])
    with pytest.raises(LabelError, match=r"Head 'name': label 'zebra, striped' at via\.csv row 3 "
                                         r"was never seen in training; known labels are "
                                         r"\['cat', 'dog'\]"):
        known.encode(["cat", "zebra, striped"], where=["via.csv row 2", "via.csv row 3"])
    assert known.encode(["cat", "猫", ""], unknown="mark").tolist() == [0, -2, -1]


@pytest.mark.parametrize("content", [b"{not json", b"[1]", b'{"name": {"classes": 5}}'])
def test_a_damaged_label_file_is_named(tmp_path, content):
    path = write(tmp_path, "labels.json", content)
    with pytest.raises(LabelError, match=r"labels\.json: the run's label file is damaged"):
        load_label_maps(path)
    with pytest.raises(LabelError, match=r"label file is missing"):
        load_label_maps(tmp_path / "nope.json")


# ============================================================================ images

def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no pixel data."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _smooth(h, w, seed=0):
    """A smooth RGB image (JPEG keeps it nearly intact), with distinct corners."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * xx / w, 255 * yy / h, 128 + 0 * xx + seed], -1)
    return rgb.astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One file per kind of image, good and bad; ``missing.jpg`` is never written."""
    d = tmp_path_factory.mktemp("images")
    rgb = _smooth(60, 90)
    write_image(d / "good.png", rgb)
    alpha = np.full(rgb.shape[:2], 9, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(d / "alpha.png")
    Image.fromarray(rgb[..., 1], "L").save(d / "gray.png")
    write_image(d / "gray16.png", rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=98)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(rgb).save(d / "rotated.jpg", exif=exif.tobytes(), quality=98)
    Image.fromarray(rgb).save(d / "full.jpg", quality=98)
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    data = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])  # its header is whole
    (d / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "enormous.png").write_bytes(_png_claiming(100_000, 100_000))
    return d


# name -> regex of the ImageError (from the header check, or only when decoding), or the
# (height, width) as displayed, with a check of the decoded pixels.
IMAGES = {
    "missing.jpg": r"missing\.jpg: image file not found; check --images",
    "empty.jpg": r"empty\.jpg: the image file is empty \(0 bytes\); replace or remove it",
    "truncated.jpg": r"truncated\.jpg: the JPEG is truncated \(no end-of-image marker\); "
                     r"re-export or re-download it\. Received: \d+ bytes",
    "text.jpg": r"text\.jpg: not a readable image .*Received: starts with b'this is a te'",
    "enormous.png": r"enormous\.png: the header claims 100000x100000 pixels, over the limit of "
                    r"200,000,000; raise CROPCLF_MAX_PIXELS",
    "x" * 300 + ".jpg": r"cannot look up this image file \(File name too long\)",
    "truncated.png": ("decoding", r"truncated\.png: OpenCV cannot decode this file; replace or "
                                  r"remove it\. Received: starts with b'\\x89PNG"),
    "good.png": (60, 90),
    "alpha.png": (60, 90),  # alpha dropped
    "gray.png": (60, 90),  # three equal channels
    "gray16.png": (60, 90),  # scaled to 8 bits
    "cmyk.jpg": (60, 90),  # converted to RGB
    "rotated.jpg": (90, 60),  # EXIF orientation applied, as VIA showed it
}


def image_error(name) -> str | None:
    """The regex of an image's error in `IMAGES`, or None for a good image."""
    expected = IMAGES.get(name)
    return expected if isinstance(expected, str) else (
        expected[1] if isinstance(expected, tuple) and isinstance(expected[0], str) else None)


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
    rgb = _smooth(60, 90)
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


# ============================================================================ the scripts

def run_script(script, *args, cwd, timeout=300):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "CROPCLF_QUIET": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=timeout, env=env)


def errors_of(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def assert_fails(done, pattern):
    """Exit status non-zero, no traceback, the last ``error:`` line matching ``pattern``."""
    assert done.returncode != 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = errors_of(done)
    assert errors and re.search(pattern, errors[-1]), done.stderr[-3000:]


@pytest.fixture
def dataset(tmp_path, images):
    """Images beside the annotations: the good ones and every kind of bad one."""
    for name in ("good.png", "truncated.jpg", "text.jpg", "empty.jpg", "enormous.png"):
        shutil.copy(images / name, tmp_path / name)
    return tmp_path


def annotations(folder, *rows, name="via.csv"):
    """A VIA 2 CSV in ``folder``; each row is (filename, shape, attrs)."""
    lines = [VIA_HEADER, *(csv_row(f, {}, 1, 0, s, a) for f, s, a in rows)]
    return write(folder, name, "\n".join(lines))


GOOD = ("good.png", RECT, {"name": "a", "type": "t"})

# (annotation rows or raw text, extra flags, regex of the last error line)
INSPECT_FAILS = {
    "malformed_cell": ([("good.png", '{"name":"rect"', {})], (),
                       r"via\.csv, row 2: region_shape_attributes is not valid JSON"),
    "python_expression": ([GOOD, ("good.png", CANARY, {})], (),
                          r"via\.csv, row 3: region_shape_attributes is not valid JSON.*__imp"),
    "unknown_shape": ([("good.png", {"name": "blob"}, {})], (),
                      r"row 2: unknown shape name 'blob'"),
    "nan_coordinate": ([("good.png", raw_rect("x", "NaN"), {})], (), r"row 2: .*'x'.*not finite"),
    "enormous_coordinate": ([("good.png", rect(width=1e12), {})], (), r"row 2: .*'width'.*enorm"),
    "text_coordinate": ([("good.png", rect(y="top"), {})], (), r"row 2: .*'y'.*not a number"),
    "climbing_filename": ([("../secret.png", RECT, {})], (), r"row 2: image file name "
                                                             r"'\.\./secret\.png' points outside"),
    "absolute_filename": ([("/etc/hosts.png", RECT, {})], (), r"row 2: .*'/etc/hosts\.png' points"),
    "non_utf8": (b"filename,region_shape_attributes\n\xff\xfe.png,{}", (),
                 r"via\.csv: byte 33 is not UTF-8"),
    "empty_file": (b"", (), r"via\.csv: the file is empty"),
    "missing_column": ("filename,name\ngood.png,a\n", (), r"row 1: missing column\(s\) "
                                                          r"\['region_shape_attributes'\]"),
    "missing_head": ([GOOD], ("--heads", "colour"), None),  # a problem line, exit 0 (below)
    "no_such_file": (None, (), r"nope\.csv: cannot read the file \(No such file or directory\)"),
}


@pytest.mark.parametrize("case", INSPECT_FAILS)
def test_inspect_data_refuses_unreadable_annotations(dataset, case):
    content, flags, pattern = INSPECT_FAILS[case]
    if content is None:
        path = dataset / "nope.csv"
    elif isinstance(content, list):
        path = annotations(dataset, *content)
    else:
        path = write(dataset, "via.csv", content)
    done = run_script("inspect_data.py", "--annotations", path, "--no-progress", "--out",
                      dataset / "out", *flags, cwd=dataset)
    if pattern is None:  # data problems are reported, one line each, and the exit status is 0
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "missing head" in done.stdout and "'colour'" in done.stdout
        return
    assert_fails(done, pattern)
    assert len(errors_of(done)) == 1
    assert not (dataset / "CANARY").exists()
    assert not (dataset / "out").exists()


def test_inspect_data_lists_every_bad_image_and_box(dataset):
    rows = [GOOD, ("missing.png", RECT, {"name": "a"}), ("empty.jpg", RECT, {"name": "a"}),
            ("truncated.jpg", RECT, {"name": "a"}), ("text.jpg", RECT, {"name": "a"}),
            ("enormous.png", RECT, {"name": "a"}), ("good.png", rect(x=5000), {"name": "a"}),
            ("good.png", rect(width=0), {"name": "a"}),
            ("good.png", rect(x=-100, y=-100, width=900, height=900), {"name": "a"}),
            ("good.png", rect(x=11), {"name": ODD_LABELS[0], "type": ODD_LABELS[2]})]
    path = annotations(dataset, *rows)
    done = run_script("inspect_data.py", "--annotations", path, "--no-progress", "--out",
                      dataset / "out", cwd=dataset)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    expected = [("missing image", "missing.png (row 3)", r"not found at"),
                ("unreadable image", "empty.jpg (row 4)", r"empty \(0 bytes\)"),
                ("unreadable image", "truncated.jpg (row 5)", r"JPEG is truncated"),
                ("unreadable image", "text.jpg (row 6)", r"not a readable image"),
                ("unreadable image", "enormous.png (row 7)", r"claims 100000x100000 pixels"),
                ("outside image", "good.png (row 8)", r"wholly outside the 90x60 image"),
                ("oversized", "good.png (row 10)", r"over 10 times as wide or tall"),
                ("zero area", "good.png (row 9)", r"zero area")]
    for kind, at, message in expected:
        assert any(kind in line and at in line and re.search(message, line)
                   for line in done.stdout.splitlines()), (kind, at, done.stdout)
    report = read_json(dataset / "out" / "report.json")
    assert report["images"]["missing"] == 1 and report["images"]["unreadable"] == 4
    assert report["left_out_of_training"] == 8
    assert ODD_LABELS[0] in report["heads"]["name"]["classes"]


def test_a_newline_in_the_offending_text_stays_on_one_error_line(dataset):
    text = VIA_HEADER + '\n"../a\nb.png",100,"{}",1,0,' + cell(RECT) + ',"{}"'
    done = run_script("inspect_data.py", "--annotations", write(dataset, "via.csv", text),
                      "--no-progress", cwd=dataset)
    assert_fails(done, r"via\.csv, row 3: image file name '\.\./a\\nb\.png' points outside.*"
                       r"Received: \.\./a\\nb\.png$")
    assert len(errors_of(done)) == 1 and "b.png" not in done.stderr.replace("a\\nb.png", "")


def test_inspect_data_header_only_is_a_problem_not_an_error(dataset):
    path = write(dataset, "via.csv", VIA_HEADER)
    done = run_script("inspect_data.py", "--annotations", path, "--no-progress", "--out",
                      dataset / "out", cwd=dataset)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "no regions" in done.stdout and "annotates no region" in done.stdout


# --- train.py: annotation errors stop it within a second, before TensorFlow starts ---------

TRAIN_FLAGS = ("--epochs", 1, "--image-size", 32, "--set", "model.width=8", "--batch-size", 8,
               "--no-evaluate")


@pytest.mark.parametrize("rows, pattern", [
    ([GOOD, ("good.png", '{"name":"rect","x":1', {"name": "a"})],
     r"via\.csv, row 3: region_shape_attributes is not valid JSON.*Received: \{\"name\":\"rect\""),
    ([GOOD, ("good.png", RECT, CANARY)],
     r"via\.csv, row 3: region_attributes is not valid JSON.*Received: __import__"),
    ([GOOD, ("../../secret.png", RECT, {"name": "a"})],
     r"via\.csv, row 3: image file name '\.\./\.\./secret\.png' points outside the image folder"),
], ids=["malformed_cell", "python_expression", "climbing_filename"])
def test_train_refuses_bad_annotations(dataset, rows, pattern):
    path = annotations(dataset, *rows)
    done = run_script("train.py", "--annotations", path, "--out", dataset / "run", *TRAIN_FLAGS,
                      cwd=dataset)
    assert_fails(done, pattern)
    assert len(errors_of(done)) == 1
    assert not (dataset / "CANARY").exists()
    assert not (dataset / "run").exists()


def test_train_refuses_a_header_without_rows(dataset):
    done = run_script("train.py", "--annotations", write(dataset, "via.csv", VIA_HEADER), "--out",
                      dataset / "run", *TRAIN_FLAGS, cwd=dataset)
    # dataset.load_frame checks the heads before the region count; either names the file
    assert_fails(done, r"via\.csv: (no regions to train on|no attribute 'name' to use as a head)")
    assert not (dataset / "run").exists()


@pytest.fixture
def train_data(tmp_path, demo_small, images):
    """The small demo with odd labels, plus regions on a missing and on a truncated image."""
    demo = pd.read_csv(demo_small, dtype=str, keep_default_na=False)
    folder = tmp_path / "data"
    shutil.copytree(Path(demo_small).parent / "images", folder / "images")
    shutil.copy(images / "truncated.jpg", folder / "images" / "truncated.jpg")
    relabel = {"circle": ODD_LABELS[0], "star": ODD_LABELS[1], "cross": ODD_LABELS[2]}
    lines = [VIA_HEADER]
    for r in demo.itertuples(index=False):
        attrs = json.loads(r.region_attributes)
        if "name" in attrs:
            attrs["name"] = relabel.get(attrs["name"], attrs["name"])
        lines.append(csv_row(r.filename, {}, r.region_count, r.region_id,
                             r.region_shape_attributes, attrs))
    bad = [("images/gone.jpg", 2), ("images/truncated.jpg", 1)]
    for filename, n in bad:
        for i in range(n):
            lines.append(csv_row(filename, {}, n, i, rect(x=i), {"name": "square", "type": "red"}))
    return write(folder, "via.csv", "\n".join(lines)), folder


@pytest.mark.slow
def test_train_stops_on_bad_images_unless_told_to_skip_them(train_data, tmp_path):
    path, folder = train_data
    done = run_script("train.py", "--annotations", path, "--out", tmp_path / "run", *TRAIN_FLAGS,
                      cwd=tmp_path)
    assert_fails(done, r"-- fix them, or pass --skip-bad-images to leave their regions out")
    errors = "\n".join(errors_of(done))
    assert "2 image(s) cannot be read" in errors
    assert re.search(r"gone\.jpg: image file not found", errors)
    assert re.search(r"truncated\.jpg: the JPEG is truncated", errors)

    done = run_script("train.py", "--annotations", path, "--out", tmp_path / "run", *TRAIN_FLAGS,
                      "--skip-bad-images", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "3 region(s) left out before training" in done.stdout
    report = read_json(tmp_path / "run" / "data_report.json")
    assert sorted(Path(p).name for p in report["bad_images"]) == ["gone.jpg", "truncated.jpg"]
    left_out = report["regions_left_out"]
    assert len(left_out) == 3
    assert {(Path(r["path"]).name, r["row"]) for r in left_out} == {
        ("gone.jpg", f"row {len(path.read_text().splitlines()) - 2}"),
        ("gone.jpg", f"row {len(path.read_text().splitlines()) - 1}"),
        ("truncated.jpg", f"row {len(path.read_text().splitlines())}")}
    classes = read_json(tmp_path / "run" / "labels.json")["name"]["classes"]
    assert set(ODD_LABELS[:3]) <= set(classes)


# --- evaluate.py and predict.py -------------------------------------------------------------

def test_evaluate_refuses_a_bogus_run(tmp_path):
    done = run_script("evaluate.py", "--run", tmp_path / "no-run", cwd=tmp_path)
    assert_fails(done, r"no-run holds no model\.keras: is it a run directory of scripts/train")


@pytest.mark.slow
def test_evaluate_reports_labels_training_never_saw(trained_run, demo_medium, tmp_path):
    demo = read_annotations(demo_medium)
    rows = demo[demo["path"].map(lambda p: Path(p).name) <= "scene_0003.jpg"]
    unseen = {"circle": ODD_LABELS[0], "star": ODD_LABELS[2]}
    lines = ["filename,name,type,region_shape_attributes"]
    for r in rows.itertuples():
        shape = {"name": "rect", "x": r.x, "y": r.y, "width": r.width, "height": r.height}
        name = unseen.get(r.name, r.name).replace('"', '""')
        lines.append(f'images/{Path(r.path).name},"{name}",{r.type},{cell(shape)}')
    path = write(tmp_path, "unseen.csv", "\n".join(lines))
    done = run_script("evaluate.py", "--run", trained_run, "--annotations", path, "--images",
                      Path(demo_medium).parent, "--out", tmp_path / "eval", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    n_unseen = int(rows["name"].isin(list(unseen)).sum())
    assert n_unseen > 0
    assert f"head 'name': {n_unseen} region(s) carry labels training never saw" in done.stdout
    report = read_json(tmp_path / "eval" / "report.json")
    assert report["regions_with_unseen_labels"] == n_unseen
    assert sorted(report["unseen_labels"]["name"]) == sorted(
        unseen[n] for n in set(rows["name"]) & set(unseen))
    assert report["regions_scored"] + len(report["regions_left_out"]) == len(rows) - n_unseen


@pytest.mark.parametrize("name, pattern", [
    ("text.jpg", r"text\.jpg: not a readable image .*starts with b'this is a te'"),
    ("truncated.jpg", r"truncated\.jpg: the JPEG is truncated \(no end-of-image marker\)"),
    ("missing.jpg", r"missing\.jpg: image file not found"),
    ("enormous.png", r"enormous\.png: the header claims 100000x100000 pixels"),
])
def test_predict_refuses_unreadable_images(dataset, name, pattern):
    done = run_script("predict.py", "--model", dataset / "no-model", "--image", dataset / name,
                      "--box", "1,1,9,9", cwd=dataset)
    assert_fails(done, pattern)
    assert len(errors_of(done)) == 1


@pytest.mark.parametrize("rows, pattern", [
    ([GOOD, ("good.png", CANARY, {})], r"via\.csv, row 3: region_shape_attributes is not valid"),
    ([("/etc/x.png", RECT, {})], r"via\.csv, row 2: image file name '/etc/x\.png' points outside"),
], ids=["python_expression", "absolute_filename"])
def test_predict_refuses_bad_annotations(dataset, rows, pattern):
    done = run_script("predict.py", "--model", dataset / "no-model", "--annotations",
                      annotations(dataset, *rows), cwd=dataset)
    assert_fails(done, pattern)
    assert len(errors_of(done)) == 1 and not (dataset / "CANARY").exists()


@pytest.mark.slow
def test_evaluate_refuses_bad_annotations(trained_run, dataset):
    path = annotations(dataset, GOOD, ("good.png", rect(x="NaN"), {"name": "a"}))
    done = run_script("evaluate.py", "--run", trained_run, "--annotations", path, "--out",
                      dataset / "eval", cwd=dataset)
    assert_fails(done, r"via\.csv, row 3: coordinate 'x' of the rect shape is not finite.*"
                       r"Received: x='NaN'")
    assert not (dataset / "eval").exists()
