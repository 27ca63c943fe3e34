"""Hostile input to the VIA reader and label files: correct handling, or an error naming file, row and value."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fixtures_via import VIA_HEADER, cell, csv_row, via_json, write

from cropclf import read_annotations
from cropclf.errors import AnnotationError, LabelError
from cropclf.data.labels import LabelMap, label_maps_to_json, load_label_maps

from hostile_inputs import (CANARY, ODD_LABELS, RECT, boxes, one_region, raw_rect,
                            rect)


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
