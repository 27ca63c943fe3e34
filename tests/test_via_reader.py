"""Tests for the VIA readers (cropclf.via): every variant, shape boxes, attributes, paths and errors."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
from fixtures_via import EXPECTED, IMAGES, VIA_HEADER, cell, csv_row, via_csv_lines, via_json, write

from cropclf.via import FIXED_COLUMNS, read_annotations, resolve_image_path
from cropclf.errors import AnnotationError

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "via-samples"
RECT = {"name": "rect", "x": 1, "y": 2, "width": 3, "height": 4}


def read_csv_text(tmp_path, text, **kwargs):
    return read_annotations(write(tmp_path, "via.csv", text), **kwargs)


def one_region_csv(shape=RECT, attrs=None, file_attrs=None):
    """A VIA 2 CSV with one region on x.jpg; shape/attrs may be raw cell text."""
    return VIA_HEADER + "\n" + csv_row("x.jpg", file_attrs or {}, 1, 0, shape,
                                       {"name": "a"} if attrs is None else attrs)


def boxes(df):
    return [tuple(r) for r in df[["x", "y", "width", "height"]].itertuples(index=False)]


# ---------------------------------------------------------------- variants


def _flat_csv():
    lines = ["filename,name,region_shape_attributes"]
    for filename, _, regions in IMAGES:
        for shape, attrs in regions or [({}, {"name": ""})]:
            lines.append(f"{filename},{attrs['name']},{cell(shape)}")
    return "\n".join(lines) + "\n"


VARIANTS = {
    "via1_csv": ("via1_csv", "#" + VIA_HEADER + "\n" + "\n".join(via_csv_lines())),
    "via2_csv": ("via2_csv", VIA_HEADER + "\n" + "\n".join(via_csv_lines())),
    "final_newline": ("via2_csv", VIA_HEADER + "\n" + "\n".join(via_csv_lines()) + "\n"),
    "crlf": ("via2_csv", VIA_HEADER + "\r\n" + "\r\n".join(via_csv_lines()) + "\r\n"),
    "bom": ("via2_csv", "\ufeff" + VIA_HEADER + "\n" + "\n".join(via_csv_lines())),
    # VIA 1.0.2: BOM, '#' header, a trailing comma on every line but the last.
    "via1_0_2": ("via1_csv", "\ufeff" + ",\n".join(["#" + VIA_HEADER, *via_csv_lines()])),
    "bare_braces": ("via2_csv", VIA_HEADER + "\n" + "\n".join(via_csv_lines()).replace(
        '"{}"', "{}")),
    "flat_csv": ("flat_csv", _flat_csv()),
    "via1_json": ("via1_json", via_json(v1=True)),
    "via2_json": ("via2_json", via_json()),
    "via2_project": ("via2_project", {"_via_settings": {}, "_via_attributes": {},
                                      "_via_img_metadata": via_json()}),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_reads_the_same_regions(tmp_path, variant):
    fmt, content = VARIANTS[variant]
    df = read_annotations(write(tmp_path, "annotations.dat", content))  # name says nothing
    assert df.attrs["format"] == fmt
    assert list(df.columns[:11]) == [*FIXED_COLUMNS, "duplicate"]
    assert [(r.filename, r.region_id, r.shape, r.name) for r in df.itertuples()] == [
        (f, i, s, label) for f, i, s, _, label, _ in EXPECTED]
    assert boxes(df) == [box for *_, box, _, _ in EXPECTED]
    assert df["path"].tolist() == [str(tmp_path / f) for f, *_ in EXPECTED]
    assert df.attrs["images"] == ["a.jpg", "b.jpg", "c.jpg"]
    assert df.attrs["images_without_regions"] == 1
    assert df.attrs["undefined_values"] == df.attrs["duplicate_regions"] == 0
    assert df.attrs["region_attributes"] == ["name"]
    if fmt != "flat_csv":
        assert df["file:caption"].tolist() == [c for *_, c in EXPECTED]
        assert df.attrs["file_attributes"] == ["file:caption"]
    assert df.dtypes["x"] == "float64" and df.dtypes["region_id"] == "int64"
    assert not df["duplicate"].any()


def test_csv_rows_name_their_line_with_header_as_row_1(tmp_path):
    df = read_annotations(write(tmp_path, "a.csv", VARIANTS["crlf"][1]))
    assert df["row"].tolist() == ["row 2", "row 3", "row 4"]
    df = read_annotations(write(tmp_path, "a.json", via_json()))
    assert df["row"].tolist()[1] == "image 'a.jpg' region 1"


def test_csv_and_json_of_the_same_data_agree(tmp_path):
    from_csv = read_annotations(write(tmp_path, "a.csv", VARIANTS["via1_csv"][1]))
    from_json = read_annotations(write(tmp_path, "a.json", via_json(v1=True)))
    columns = [c for c in from_csv.columns if c != "row"]
    assert from_csv[columns].equals(from_json[columns])


def test_header_only_gives_an_empty_frame(tmp_path):
    df = read_csv_text(tmp_path, VIA_HEADER)
    assert len(df) == 0 and list(df.columns) == [*FIXED_COLUMNS, "duplicate"]
    assert df.attrs["format"] == "via2_csv" and df.attrs["images"] == []
    df = read_csv_text(tmp_path, "filename,name,type,region_shape_attributes\r\n")
    assert list(df.columns[-2:]) == ["name", "type"] and len(df) == 0


def test_flat_csv_may_carry_json_attribute_cells(tmp_path):
    text = ("filename,region_shape_attributes,region_attributes,file_attributes,kind\n"
            f"x.jpg,{cell(RECT)},{cell({'name': 'cat'})},{cell({'cap': 'c'})},big\n")
    df = read_csv_text(tmp_path, text)
    assert df.attrs["format"] == "flat_csv"
    assert df[["kind", "name", "file:cap"]].values.tolist() == [["big", "cat", "c"]]


def test_empty_json_export_gives_an_empty_frame(tmp_path):
    df = read_annotations(write(tmp_path, "a.json", {}))
    assert len(df) == 0 and df.attrs["format"] == "via2_json" and df.attrs["images"] == []


def test_flat_csv_label_columns_are_stripped_attributes(tmp_path):
    text = "filename,type,region_shape_attributes,name\nx.jpg, big ," + cell(RECT) + ",  \n"
    df = read_csv_text(tmp_path, text)
    assert df.attrs["region_attributes"] == ["type", "name"]
    assert df[["type", "name"]].values.tolist() == [["big", ""]]


@pytest.mark.parametrize("content", [
    "# Exported using VGG Image Annotator (http://www.robots.ox.ac.uk/~vgg/software/via)\n"
    '# CSV_HEADER = metadata_id,file_list,flags,temporal_coordinates,spatial_coordinates,metadata\n'
    '# SHAPE_ID = {"POINT":1,"RECTANGLE":2}\n'
    '1_abc,"[""a.jpg""]",0,"[]","[2,10,20,30,40]","{""1"":""cat""}"\n',
    'metadata_id,file_list,flags,temporal_coordinates,spatial_coordinates,metadata\n'
    '1_abc,"[""a.jpg""]",0,"[]","[2,10,20,30,40]","{}"\n',
    {"project": {"pid": "__VIA_PROJECT_ID__"}, "config": {}, "attribute": {}, "file": {},
     "metadata": {}, "view": {}},
], ids=["via3_csv", "via3_csv_no_comments", "via3_json"])
def test_via3_files_are_refused(tmp_path, content):
    with pytest.raises(AnnotationError, match=r"via3\.dat: This is a VIA 3 file.*VIA 2 CSV/JSON"):
        read_annotations(write(tmp_path, "via3.dat", content))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("shape, box", [
    ({"name": "rect", "x": 10, "y": 20, "width": 30, "height": 5}, (10, 20, 30, 5)),
    ({"name": "rect", "x": -2, "y": -1, "width": 8, "height": 3}, (-2, -1, 8, 3)),  # not clipped
    ({"name": "rect", "x": 10, "y": 20, "width": -4, "height": -6}, (6, 14, 4, 6)),
    ({"name": "circle", "cx": 50, "cy": 40, "r": 7.5}, (42.5, 32.5, 15, 15)),
    ({"name": "ellipse", "cx": 50, "cy": 40, "rx": 10, "ry": 4}, (40, 36, 20, 8)),
    ({"name": "ellipse", "cx": 50, "cy": 40, "rx": 10, "ry": 4, "theta": 0}, (40, 36, 20, 8)),
    ({"name": "ellipse", "cx": 50, "cy": 40, "rx": 10, "ry": 4, "theta": math.pi / 2},
     (46, 30, 8, 20)),
    ({"name": "ellipse", "cx": 0, "cy": 0, "rx": 4, "ry": 2, "theta": math.pi / 4},
     (-math.sqrt(10), -math.sqrt(10), 2 * math.sqrt(10), 2 * math.sqrt(10))),
    ({"name": "polygon", "all_points_x": [5, 1, 9, 5], "all_points_y": [3, 7, 4, 3]},
     (1, 3, 8, 4)),
    ({"name": "polygon", "all_points_x": [313, 313], "all_points_y": [388, 388]},
     (313, 388, 0, 0)),
    ({"name": "polyline", "all_points_x": [0, -3.5], "all_points_y": [2, 12]}, (-3.5, 2, 3.5, 10)),
    ({"name": "point", "cx": 12, "cy": 9}, (12, 9, 0, 0)),
], ids=["rect", "rect_negative_xy_kept", "rect_negative_size", "circle", "ellipse_no_theta",
        "ellipse_theta_0", "ellipse_theta_pi_2_swaps", "ellipse_theta_pi_4", "polygon_closed",
        "polygon_zero_area", "polyline", "point"])
def test_shape_box(tmp_path, shape, box):
    df = read_csv_text(tmp_path, one_region_csv(shape))
    assert df["shape"].tolist() == [shape["name"]]
    assert boxes(df)[0] == pytest.approx(box)


# ---------------------------------------------------------------- attributes


def test_project_maps_option_ids_to_labels(tmp_path):
    attributes = {
        "region": {
            "type": {"type": "dropdown", "options": {"10": "OVER", "b": "Bird"}},
            "q": {"type": "checkbox", "options": {"good": "Good", "front": "Frontal"}},
            "note": {"type": "text", "default_value": ""},
            "unused": {"type": "radio", "options": {"u": "U"}},
        },
        "file": {"side": {"type": "radio", "options": {"Right ": "Right"}}},
    }
    images = [("p.jpg", {"side": "Right "}, [
        (RECT, {"type": "10", "q": {"good": True, "front": True}, "note": " hi "}),
        (dict(RECT, x=5), {"type": "b", "q": {}, "note": 3.0}),
        (dict(RECT, x=6), {"type": "unlisted", "q": {"good": True, "other": True}}),
    ])]
    project = {"_via_settings": {"core": {"default_filepath": ""}}, "_via_attributes": attributes,
               "_via_img_metadata": via_json(images)}
    df = read_annotations(write(tmp_path, "project.json", project))
    assert df.attrs["format"] == "via2_project"
    assert df.attrs["region_attributes"] == ["type", "q", "note", "unused"]
    assert df["type"].tolist() == ["OVER", "Bird", "unlisted"]
    assert df["q"].tolist() == ["Frontal;Good", "", "Good;other"]
    assert df["note"].tolist() == ["hi", "3", ""]
    assert df["unused"].tolist() == ["", "", ""]
    assert df["file:side"].tolist() == ["Right"] * 3


def test_export_keeps_option_ids_and_encodes_values(tmp_path):
    attrs = {"q": {"b": True, "a": True, "c": False}, "n": 2.5, "i": 7, "t": True, "z": None,
             "w": "   ", "x": "collides", "name": " Swan "}
    images = [("p.jpg", {"f": 1.0}, [(RECT, attrs)])]
    df = read_annotations(write(tmp_path, "a.json", via_json(images)))
    row = df.iloc[0]
    assert (row["q"], row["n"], row["i"], row["t"], row["z"], row["w"]) == (
        "a;b", "2.5", "7", "true", "", "")
    assert row["x"] == 1.0 and row["region:x"] == "collides" and row["name"] == "Swan"
    assert row["file:f"] == "1"
    assert df.attrs["region_attributes"] == ["q", "n", "i", "t", "z", "w", "region:x", "name"]
    assert df.attrs["file_attributes"] == ["file:f"]


def test_missing_attribute_is_empty(tmp_path):
    images = [("p.jpg", {}, [(RECT, {"name": "a", "kind": "k"}), (dict(RECT, x=9), {})])]
    df = read_annotations(write(tmp_path, "a.json", via_json(images)))
    assert df[["name", "kind"]].values.tolist() == [["a", "k"], ["", ""]]


def test_undefined_values_are_tolerated_and_counted(tmp_path):
    lines = [VIA_HEADER,
             csv_row("x.jpg", {}, 3, 0, RECT, '{"name":undefined,"kind":"undefined"}'),
             csv_row("x.jpg", {}, 3, 1, RECT, '{"name":"a", "kind":"b",}'),
             csv_row("x.jpg", {}, 3, 2, '{"name":"point","cx":1,"cy":2,}', '{"name":"c"}')]
    df = read_csv_text(tmp_path, "\n".join(lines))
    assert df["name"].tolist() == ["", "a", "c"]
    assert df["kind"].tolist() == ["undefined", "b", ""]  # the word inside a string is kept
    assert df.attrs["undefined_values"] == 1


def test_duplicates_are_kept_flagged_and_counted(tmp_path):
    region = (RECT, {"name": "a"})
    images = [("p.jpg", {}, [region, region, (RECT, {"name": "b"}), region]),
              ("q.jpg", {}, [region])]
    df = read_annotations(write(tmp_path, "a.json", via_json(images)))
    assert df["duplicate"].tolist() == [False, True, False, True, False]
    assert df.attrs["duplicate_regions"] == 2


def test_empty_rows_are_images_not_regions(tmp_path):
    lines = [VIA_HEADER, csv_row("e.jpg", {}, 0, 0, {}, {}),
             csv_row("f.jpg", {}, 0, 0, {}, {"name": "x"}),  # region_count 0: no region
             csv_row("g.jpg", {}, 1, 0, {}, {"name": ""}),  # nothing to crop, nothing labelled
             csv_row("x.jpg", {}, 1, 0, RECT, {})]  # unlabelled but real region
    df = read_csv_text(tmp_path, "\n".join(lines))
    assert df["filename"].tolist() == ["x.jpg"]
    assert df.attrs["images"] == ["e.jpg", "f.jpg", "g.jpg", "x.jpg"]
    assert df.attrs["images_without_regions"] == 3


# ---------------------------------------------------------------- image paths


@pytest.mark.parametrize("filename, expected", [
    ("a.jpg", "a.jpg"),
    ("./a.jpg", "a.jpg"),
    ("sub/IMG (4484).jpg", "sub/IMG (4484).jpg"),
    ("sub\\IMG (4484).jpg", "sub/IMG (4484).jpg"),
    ("my img.jpg", "my img.jpg"),
    ("file://{root}/my%20img.jpg", "my img.jpg"),
    ("file:///{root}/sub/IMG%20(4484).jpg", "sub/IMG (4484).jpg"),
    ("file://C:\\_Denis\\img\\a.jpg", "a.jpg"),
    ("C:\\Users\\me\\a.jpg", "a.jpg"),
    ("https://example.com/data/a.jpg?x=1", "a.jpg"),
    ("elsewhere/a.jpg", "a.jpg"),  # missing there, same base name under the root
    ("../a.jpg", "a.jpg"),  # base-name fallback counts as inside
    ("gone/missing.jpg", "gone/missing.jpg"),  # nothing exists: best candidate
])
def test_resolve_image_path(tmp_path, filename, expected):
    root = tmp_path / "root"
    for name in ("a.jpg", "my img.jpg", "sub/IMG (4484).jpg"):
        write(root, name, b"x")
    filename = filename.format(root=str(root).lstrip("/") if "///" in filename else root)
    assert resolve_image_path(filename, root) == root / expected


@pytest.mark.parametrize("filename", ["../x.jpg", "sub/../../x.jpg", "/etc/x.jpg"])
def test_resolve_image_path_refuses_to_leave_the_root(tmp_path, filename):
    with pytest.raises(AnnotationError, match=re.escape(repr(filename))):
        resolve_image_path(filename, tmp_path)
    assert resolve_image_path(filename, tmp_path, allow_outside=True).name == "x.jpg"


def test_reader_path_escape_names_file_and_row(tmp_path):
    text = VIA_HEADER + "\n" + csv_row("../out.jpg", {}, 1, 0, RECT, {})
    with pytest.raises(AnnotationError, match=r"via\.csv, row 2: .*'\.\./out\.jpg'"):
        read_csv_text(tmp_path, text)
    df = read_csv_text(tmp_path, text, allow_outside_root=True)
    assert df["path"][0] == str(tmp_path.parent / "out.jpg")


def test_image_root_and_project_default_filepath(tmp_path):
    write(tmp_path, "imgs/a.jpg", b"x")
    df = read_annotations(write(tmp_path, "a.json", via_json()), image_root=tmp_path / "imgs")
    assert df["path"].tolist()[:2] == [str(tmp_path / "imgs/a.jpg")] * 2
    project = {"_via_settings": {"core": {"default_filepath": "imgs/"}}, "_via_attributes": {},
               "_via_img_metadata": via_json()}
    df = read_annotations(write(tmp_path, "p.json", project))
    assert df["path"].tolist() == [str(tmp_path / p) for p in ("imgs/a.jpg", "imgs/a.jpg", "b.jpg")]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("shape, attrs, message", [
    ("{'name': 'rect'}", None, r"region_shape_attributes is not valid JSON.*Python"),
    ("__import__('os').system('true')", None, r".*not valid JSON.*Received: __import__"),
    ('{"name":"rect","x":1', None, r"region_shape_attributes is not valid JSON"),
    ("name=rect;x=1;y=2;width=3;height=4", None, r"VIA 0\.1b.*Received: name=rect;x=1"),
    ({"name": "square", "x": 1}, None, r"unknown shape name 'square'.*rect, circle"),
    ({"name": "rect", "x": 1, "y": 2}, None, r"lacks \['width', 'height'\]; found \['name', 'x'"),
    ({"name": "circle", "cx": "a", "cy": 1, "r": 2}, None, r"'cx' .* is not a number.*cx='a'"),
    ({"name": "point", "cx": True, "cy": 1}, None, r"'cx' .* not a number.*cx=True"),
    ('{"name":"rect","x":NaN,"y":1,"width":2,"height":3}', None, r"'x' .* not finite.*x=nan"),
    ('{"name":"point","cx":1,"cy":Infinity}', None, r"'cy' .* not finite.*cy=inf"),
    ({"name": "polygon", "all_points_x": [1, 2], "all_points_y": [1]}, None,
     r"equal length; found 2 and 1"),
    ({"name": "polygon", "all_points_x": [], "all_points_y": []}, None,
     r"non-empty .* found 0 and 0"),
    ({"name": "polyline", "all_points_x": 5, "all_points_y": [1]}, None, r"found int and 1"),
    ({"name": "polygon", "all_points_x": [1, None], "all_points_y": [1, 2]}, None,
     r"'all_points_x' .* not a number.*all_points_x=None"),
    ({}, {"name": "cat"}, r"the region has attributes but no shape"),
    (RECT, '["cat"]', r"region_attributes must be a JSON object.*Received: \[\"cat\"\]"),
    (RECT, '{"name":"cat"', r"region_attributes is not valid JSON"),
])
def test_bad_cells_name_file_row_and_text(tmp_path, shape, attrs, message):
    with pytest.raises(AnnotationError, match=r"via\.csv, row 2: .*" + message):
        read_csv_text(tmp_path, one_region_csv(shape, attrs))


@pytest.mark.parametrize("content, message", [
    (b"", r"bad\.csv: the file is empty"),
    (b" \r\n\n", r"bad\.csv: the file is empty"),
    (VIA_HEADER.encode() + b"\nx\xe9.jpg,1",
     rf"bad\.csv: byte {len(VIA_HEADER) + 2} is not UTF-8.*as UTF-8"),
    (b"\xff\xfe" + "filename".encode("utf-16-le"), r"bad\.csv: byte 0 is not UTF-8"),
    (b"filename,name\nx.jpg,cat\n", r"row 1: missing column\(s\) \['region_shape_attributes'\]; "
                                    r"found \['filename', 'name'\]"),
    ((VIA_HEADER + "\n" + csv_row("x.jpg", {}, 1, 0, RECT, {}) + ",extra").encode(),
     r"row 2: expected 7 fields, found 8"),
    ((VIA_HEADER + "\n\n" + csv_row("a,b.jpg", {}, 1, 0, RECT, {})).encode(),
     r"row 3: expected 7 fields, found 8.*Received: a,b\.jpg"),
    ((VIA_HEADER + "\n" + csv_row("x.jpg", {}, 1, "zero", RECT, {})).encode(),
     r"row 2: region_id must be an integer.*Received: zero"),
    ((VIA_HEADER + "\n" + csv_row("", {}, 1, 0, RECT, {})).encode(), r"row 2: the image file name"),
    (b"[1, 2]", r"bad\.csv: expected a JSON object keyed by image"),
    (b'{"a.jpg1": {"filename": "a.jpg", "regions": [}}', r"bad\.csv: the JSON file is not valid "
                                                         r"JSON at line 1 column 46"),
    (b'{"a.jpg1": {"size": 1, "regions": []}}', r"image key 'a\.jpg1': expected an object with"),
    (b'{"a.jpg1": {"filename": "a.jpg", "regions": 5}}', r"image 'a\.jpg': 'regions' must be"),
    (b'{"a.jpg1": {"filename": "a.jpg", "regions": ["r"]}}', r"image 'a\.jpg' region 0: a region"),
    (b'{"a.jpg1": {"filename": "a.jpg", "regions": [{"shape_attributes": {"name": "blob"}}]}}',
     r"image 'a\.jpg' region 0: unknown shape name 'blob'"),
    (b'{"region": {"name": {"type": "text"}}, "file": {}}', r"VIA attribute definition file"),
    (b'{"images": [], "annotations": [], "categories": []}', r"this is a COCO file"),
])
def test_bad_files_name_file_and_place(tmp_path, content, message):
    with pytest.raises(AnnotationError, match=message):
        read_annotations(write(tmp_path, "bad.csv", content))


def test_long_offending_text_is_truncated(tmp_path):
    with pytest.raises(AnnotationError, match="must be a JSON object") as info:
        read_csv_text(tmp_path, one_region_csv('["' + "x" * 500 + '"]'))
    assert str(info.value).endswith('Received: ["' + "x" * 75 + "...")


def test_bad_json_file_shows_text_near_the_error(tmp_path):
    content = '{"a.jpg1": {"filename": "a.jpg", ' + " " * 200 + '"regions": [}}'
    with pytest.raises(AnnotationError, match=r"line 1 column 246.*Received: .*\"regions\": \[}}"):
        read_annotations(write(tmp_path, "a.json", content))


def test_module_imports_no_heavy_framework():
    for path in Path(__file__).resolve().parents[1].joinpath("cropclf", "via").glob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and n.module}
        assert not imported & {"tensorflow", "keras", "cv2", "albumentations"}, path
        assert "eval(" not in text, path


# ---------------------------------------------------------------- real VIA exports


def sample(relative):
    if not SAMPLES.is_dir():
        pytest.skip(f"real VIA samples not found at {SAMPLES}")
    return read_annotations(SAMPLES / relative)


@pytest.mark.parametrize("name", ["unit_test_annotation1.csv", "unit_test_annotation2.json"])
def test_sample_via1_unit_test(name):
    df = sample(f"ox-vgg_via__v1_unit_test/{name}")
    assert df.attrs["format"] == ("via1_csv" if name.endswith("csv") else "via1_json")
    assert df["shape"].value_counts().to_dict() == {
        "point": 5, "ellipse": 3, "rect": 2, "circle": 1, "polygon": 1}
    assert df.attrs["images"] == ["test_pattern_qbist.jpg", "sinus_test_pattern.jpg",
                                  "a_swan_swimming_in_geneve_lake.jpg"]
    assert all(Path(p).is_file() for p in df["path"])
    by_row = df.set_index(["filename", "region_id"])
    # ellipse cx=252 cy=190 rx=27 ry=26; circle cx=148 cy=268 r=43; VIA 1 closed polygon
    assert boxes(by_row.loc[[("test_pattern_qbist.jpg", 0)]]) == [(225, 164, 54, 52)]
    assert boxes(by_row.loc[[("test_pattern_qbist.jpg", 5)]]) == [(105, 225, 86, 86)]
    assert boxes(by_row.loc[[("sinus_test_pattern.jpg", 0)]]) == [(105, 135, 323, 164)]
    assert df["name"][0] == 'ellipse "red"' and df["name"][3] == "unknown 598 fjs £$ *(&£^"
    assert df["name"][8] == 'a "white" swan, good fortune'
    assert df["file:caption"].tolist()[8:] == ['a swan in geneve lake"', "", "", ""]
    assert (df["name"] == "").sum() == 3


def test_sample_via1_csv_and_json_agree():
    from_csv = sample("ox-vgg_via__v1_unit_test/unit_test_annotation1.csv")
    from_json = sample("ox-vgg_via__v1_unit_test/unit_test_annotation2.json")
    columns = [c for c in from_csv.columns if c != "row"]
    assert from_csv[columns].equals(from_json[columns])


def test_sample_v2_basic_demo():
    df = sample("ox-vgg_via__v2_basic_demo/via_basic_demo_annotations.json")
    assert df.attrs["format"] == "via2_json" and len(df) == 4
    assert df["name"].tolist() == ["Swan", "Plato", "Socrates", "Hemlock"]
    assert df["type"].tolist() == ["bird", "human", "human", "cup"]
    assert df["image_quality"].tolist() == [
        "good_illumination", "good_illumination", "frontal;good_illumination", ""]
    assert boxes(df) == [(94, 124, 312, 149), (174, 139, 108, 227), (347, 114, 91, 209),
                         (299, 168, 34, 24)]
    assert df.attrs["file_attributes"] == ["file:caption", "file:public_domain", "file:image_url"]
    unlabelled = sample("ox-vgg_via__v2_basic_demo/via_basic_demo_default_regions.csv")
    assert boxes(unlabelled) == boxes(df) and unlabelled.attrs["region_attributes"] == []


def test_sample_iteam1_csv_and_duplicated_json():
    from_csv = sample("iteam1_2label/via_region_data.csv")
    assert len(from_csv) == 25 and from_csv.attrs["duplicate_regions"] == 0
    assert from_csv["shape"].value_counts().to_dict() == {
        "rect": 18, "polygon": 3, "polyline": 2, "ellipse": 1, "circle": 1}
    from_json = sample("iteam1_2label/via_region_data.json")
    assert len(from_json) == 42 and from_json.attrs["duplicate_regions"] == 17
    kept = from_json[~from_json["duplicate"]]
    columns = ["filename", "shape", "x", "y", "width", "height", "labels"]
    assert sorted(map(tuple, kept[columns].values)) == sorted(map(tuple, from_csv[columns].values))
    shapes = from_csv[from_csv["filename"] == "shapes.jpg"].set_index("shape")
    # polygon x [428,324,548] y [33,199,199]; ellipse (no theta) cx=149 cy=339 rx=111 ry=76
    assert boxes(shapes.loc[["polygon"]]) == [(324, 33, 224, 166)]
    assert boxes(shapes.loc[["ellipse"]]) == [(38, 263, 222, 152)]


def test_sample_rice_leaf_polygons():
    val = sample("tzelalouzeir_rice_leaf_diseases/val/via_region_data.csv")
    assert len(val) == 149 and set(val["shape"]) == {"polygon"} and len(val.attrs["images"]) == 16
    assert val["class_id"].value_counts().to_dict() == {
        "brown_spot": 68, "leaf_smut": 58, "bacteria": 23}
    assert all(Path(p).is_file() for p in val["path"])
    train = sample("tzelalouzeir_rice_leaf_diseases/train/via_region_data.csv")
    assert len(train) == 627 and len(train.attrs["images"]) == 98
    spot = train[(train["filename"] == "Brown_spot1.jpg") & (train["region_id"] == 33)]
    assert boxes(spot) == [(313, 388, 0, 0)] and spot["class_id"].tolist() == [""]
    train_json = sample("tzelalouzeir_rice_leaf_diseases/train/via_region_data.json")
    columns = [c for c in train.columns if c != "row"]
    assert train[columns].equals(train_json[columns])
