"""What real VIA exports contain, as tiny inline fixtures: no ``../shared`` needed.

The real-sample tests in test_annotations.py skip in a clone without ``../shared/via-samples``.
Each fixture here is typed the way VIA writes it (compact JSON, every ``"`` doubled inside a quoted
CSV cell, no trailing newline), copying one quirk seen in those samples or in VIA's own source
(/work/shared/VIA_FORMAT.md), and each test checks the exact rows and values read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_image
from fixtures_via import write

from cropclf.via import read_annotations

# As ox-vgg/via's VIA 1 unit test CSV: `#filename` header, JSON string escapes (`\"`) inside a
# CSV cell whose quotes are doubled, commas/semicolons/`£` in values, a whitespace-only caption,
# an unlabelled region (`{}`), a closed VIA 1 polygon; no newline after the last row.
VIA1_CSV = (
    '#filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,'
    'region_attributes\n'
    'q.jpg,129855,"{""caption"":""+-08374*&$£*""}",3,0,'
    '"{""name"":""ellipse"",""cx"":252,""cy"":190,""rx"":27,""ry"":26}",'
    r'"{""name"":""ellipse \""red\""""}"' '\n'
    'q.jpg,129855,"{""caption"":""+-08374*&$£*""}",3,1,'
    '"{""name"":""rect"",""x"":79,""y"":310,""width"":66,""height"":62}",'
    '"{""name"":""a \'rect\' in \\""blue\\"", background""}"\n'
    'q.jpg,129855,"{""caption"":""+-08374*&$£*""}",3,2,'
    '"{""name"":""circle"",""cx"":148,""cy"":268,""r"":43}","{}"\n'
    r's.jpg,27894,"{""caption"":""a swan in geneve lake\""""}",1,0,'
    '"{""name"":""polygon"",""all_points_x"":[121,105,188,121],""all_points_y"":[172,212,292,172]}",'
    r'"{""name"":""a \""white\"" swan, good fortune""}"' '\n'
    'w.jpg,62201,"{""caption"":""  ""}",1,0,'
    '"{""name"":""point"",""cx"":505,""cy"":113}",'
    '"{""name"":""a point, in infinity, $, :""}"'
)
# The same data as VIA 1.x's JSON export: `fileref` and `base64_img_data` keys (always ""),
# regions as an object keyed "0", "1", ...; top-level keys are filename + size.
VIA1_JSON = (
    '{"q.jpg129855":{"fileref":"","size":129855,"filename":"q.jpg","base64_img_data":"",'
    '"file_attributes":{"caption":"+-08374*&$£*"},"regions":{'
    '"0":{"shape_attributes":{"name":"ellipse","cx":252,"cy":190,"rx":27,"ry":26},'
    r'"region_attributes":{"name":"ellipse \"red\""}},'
    '"1":{"shape_attributes":{"name":"rect","x":79,"y":310,"width":66,"height":62},'
    '"region_attributes":{"name":"a \'rect\' in \\"blue\\", background"}},'
    '"2":{"shape_attributes":{"name":"circle","cx":148,"cy":268,"r":43},"region_attributes":{}}}},'
    '"s.jpg27894":{"fileref":"","size":27894,"filename":"s.jpg","base64_img_data":"",'
    r'"file_attributes":{"caption":"a swan in geneve lake\""},"regions":{'
    '"0":{"shape_attributes":{"name":"polygon","all_points_x":[121,105,188,121],'
    '"all_points_y":[172,212,292,172]},'
    r'"region_attributes":{"name":"a \"white\" swan, good fortune"}}}},'
    '"w.jpg62201":{"fileref":"","size":62201,"filename":"w.jpg","base64_img_data":"",'
    '"file_attributes":{"caption":"  "},"regions":{'
    '"0":{"shape_attributes":{"name":"point","cx":505,"cy":113},'
    '"region_attributes":{"name":"a point, in infinity, $, :"}}}}}'
)
VIA1_ROWS = [  # filename, region_id, shape, (x, y, w, h), name, file caption
    ("q.jpg", 0, "ellipse", (225, 164, 54, 52), 'ellipse "red"', "+-08374*&$£*"),
    ("q.jpg", 1, "rect", (79, 310, 66, 62), "a 'rect' in \"blue\", background", "+-08374*&$£*"),
    ("q.jpg", 2, "circle", (105, 225, 86, 86), "", "+-08374*&$£*"),
    ("s.jpg", 0, "polygon", (105, 172, 83, 120), 'a "white" swan, good fortune',
     'a swan in geneve lake"'),
    ("w.jpg", 0, "point", (505, 113, 0, 0), "a point, in infinity, $, :", ""),
]


def rows(df, *columns):
    return [(r["filename"], r["region_id"], r["shape"], (r["x"], r["y"], r["width"], r["height"]),
             *(r[c] for c in columns)) for _, r in df.iterrows()]


@pytest.mark.parametrize("name, content, fmt", [
    ("via_region_data.csv", VIA1_CSV, "via1_csv"),
    ("via_region_data.json", VIA1_JSON, "via1_json"),
])
def test_via1_escaped_quotes_hash_header_and_fileref(tmp_path, name, content, fmt):
    assert not content.endswith("\n") and "\\\"\"" in VIA1_CSV  # the quirks are really there
    df = read_annotations(write(tmp_path, name, content))
    assert df.attrs["format"] == fmt
    assert rows(df, "name", "file:caption") == VIA1_ROWS
    assert df["row"].tolist()[:2] == (["row 2", "row 3"] if fmt.endswith("csv") else
                                      ["image 'q.jpg' region 0", "image 'q.jpg' region 1"])
    assert df.attrs["images"] == ["q.jpg", "s.jpg", "w.jpg"]
    assert df.attrs["region_attributes"] == ["name"]
    assert df.attrs["file_attributes"] == ["file:caption"]  # fileref/base64_img_data are no attributes
    assert df["path"].tolist() == [str(tmp_path / f) for f, *_ in VIA1_ROWS]
    assert df.attrs["undefined_values"] == df.attrs["duplicate_regions"] == 0


def test_naive_quote_undoubling_would_have_broken_the_fixture():
    # Guards the fixture: replacing "" by " before splitting the CSV row loses the label's quotes.
    import csv
    import io
    import json

    line = VIA1_CSV.splitlines()[1]
    label = json.loads(next(csv.reader(io.StringIO(line)))[6])["name"]
    assert label == 'ellipse "red"'
    assert '"{"name":"ellipse \\"red\\""}"' in line.replace('""', '"')


# As VIA 2's basic demo: images added by URL have size -1, so keys are `<filename>-1`; `type` is a
# dropdown option id; `image_quality` is a checkbox stored as {option_id: true}, absent on one
# region; file attributes hold a URL with `#`.
VIA2_SIZE_MINUS_1_JSON = (
    '{"swan.jpg-1":{"filename":"swan.jpg","size":-1,"regions":[{"shape_attributes":{'
    '"name":"polygon","all_points_x":[116,94,176,343],"all_points_y":[157,195,264,273]},'
    '"region_attributes":{"name":"Swan","type":"bird","image_quality":{"good_illumination":true}}}],'
    '"file_attributes":{"caption":"Swan in lake Geneve","public_domain":"no",'
    '"image_url":"http://www.robots.ox.ac.uk/~vgg/software/via/images/swan.jpg"}},'
    '"socrates.jpg-1":{"filename":"socrates.jpg","size":-1,"regions":['
    '{"shape_attributes":{"name":"rect","x":174,"y":139,"width":108,"height":227},'
    '"region_attributes":{"name":"Plato","type":"human","image_quality":{"good_illumination":true}}},'
    '{"shape_attributes":{"name":"rect","x":347,"y":114,"width":91,"height":209},'
    '"region_attributes":{"name":"Socrates","type":"human",'
    '"image_quality":{"good_illumination":true,"frontal":true}}},'
    '{"shape_attributes":{"name":"ellipse","cx":316,"cy":180,"rx":17,"ry":12},'
    '"region_attributes":{"name":"Hemlock","type":"cup"}}],'
    '"file_attributes":{"caption":"The Death of Socrates by David","public_domain":"yes",'
    '"image_url":"https://en.wikipedia.org/wiki/The_Death_of_Socrates#/media/File:David.jpg"}}}'
)
# The same regions in VIA 2's CSV (no `#`), file_size -1, checkbox objects inside the cell, one
# checkbox with nothing ticked ({}: VIA deletes unticked options) and one hand-edited `false`.
VIA2_SIZE_MINUS_1_CSV = (
    "filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,"
    "region_attributes\n"
    'swan.jpg,-1,"{}",1,0,"{""name"":""polygon"",""all_points_x"":[116,94,176,343],'
    '""all_points_y"":[157,195,264,273]}","{""name"":""Swan"",""type"":""bird"",'
    '""image_quality"":{""good_illumination"":true}}"\n'
    'socrates.jpg,-1,"{}",3,0,"{""name"":""rect"",""x"":174,""y"":139,""width"":108,""height"":227}",'
    '"{""name"":""Plato"",""type"":""human"",""image_quality"":{}}"\n'
    'socrates.jpg,-1,"{}",3,1,"{""name"":""rect"",""x"":347,""y"":114,""width"":91,""height"":209}",'
    '"{""name"":""Socrates"",""type"":""human"",""image_quality"":{""good_illumination"":true,'
    '""frontal"":true,""blurred"":false}}"\n'
    'socrates.jpg,-1,"{}",3,2,"{""name"":""ellipse"",""cx"":316,""cy"":180,""rx"":17,""ry"":12}",'
    '"{""name"":""Hemlock"",""type"":""cup""}"'
)
VIA2_BOXES = [("swan.jpg", 0, "polygon", (94, 157, 249, 116)),
              ("socrates.jpg", 0, "rect", (174, 139, 108, 227)),
              ("socrates.jpg", 1, "rect", (347, 114, 91, 209)),
              ("socrates.jpg", 2, "ellipse", (299, 168, 34, 24))]


def test_size_minus_one_keys_and_checkbox_dicts_in_json(tmp_path):
    for name in ("swan.jpg", "socrates.jpg"):
        (tmp_path / name).write_bytes(b"")  # present, so the path must be this very file
    df = read_annotations(write(tmp_path, "via_export_json.json", VIA2_SIZE_MINUS_1_JSON))
    assert df.attrs["format"] == "via2_json"
    assert [r[:4] for r in rows(df)] == VIA2_BOXES  # filenames from the values, not "swan.jpg-1"
    assert df["path"].tolist() == [str(tmp_path / f) for f, *_ in VIA2_BOXES]
    assert df.attrs["images"] == ["swan.jpg", "socrates.jpg"]
    assert df["name"].tolist() == ["Swan", "Plato", "Socrates", "Hemlock"]
    assert df["type"].tolist() == ["bird", "human", "human", "cup"]
    # Ticked options, sorted and joined by ";" whatever order VIA stored them in; absent key: "".
    assert df["image_quality"].tolist() == [
        "good_illumination", "good_illumination", "frontal;good_illumination", ""]
    assert df.attrs["region_attributes"] == ["name", "type", "image_quality"]
    assert df["file:image_url"].tolist()[1:] == [
        "https://en.wikipedia.org/wiki/The_Death_of_Socrates#/media/File:David.jpg"] * 3
    assert df["file:public_domain"].tolist() == ["no", "yes", "yes", "yes"]


def test_size_minus_one_and_checkbox_cells_in_csv(tmp_path):
    df = read_annotations(write(tmp_path, "via_export_csv.csv", VIA2_SIZE_MINUS_1_CSV))
    assert df.attrs["format"] == "via2_csv"
    assert [r[:4] for r in rows(df)] == VIA2_BOXES
    assert df["row"].tolist() == ["row 2", "row 3", "row 4", "row 5"]
    assert df["name"].tolist() == ["Swan", "Plato", "Socrates", "Hemlock"]
    # {} = nothing ticked; `false` is not ticked; a missing key is empty too.
    assert df["image_quality"].tolist() == ["good_illumination", "", "frontal;good_illumination", ""]
    assert df.attrs["file_attributes"] == []  # "{}" cells define no file attribute


def test_checkbox_option_ids_become_project_labels(tmp_path):
    # A VIA 2 project maps checkbox option ids to their labels; ids without a label stay ids.
    project = ('{"_via_settings":{"core":{"default_filepath":""},"project":{"name":"p"}},'
               '"_via_img_metadata":' + VIA2_SIZE_MINUS_1_JSON + ','
               '"_via_attributes":{"region":{"name":{"type":"text","description":"",'
               '"default_value":""},"type":{"type":"dropdown","description":"","options":{'
               '"bird":"Bird","human":"Human","cup":"Cup","unknown":"Unknown"},'
               '"default_options":{"unknown":true}},"image_quality":{"type":"checkbox",'
               '"description":"","options":{"blurred":"Blurred Region","good_illumination":'
               '"Good Illumination","frontal":"Frontal Face"},"default_options":{"good":true}}},'
               '"file":{}}}')
    df = read_annotations(write(tmp_path, "p.json", project))
    assert df.attrs["format"] == "via2_project"
    assert df["type"].tolist() == ["Bird", "Human", "Human", "Cup"]
    assert df["image_quality"].tolist() == [
        "Good Illumination", "Good Illumination", "Frontal Face;Good Illumination", ""]


# As iteam1/2label's JSON export: the same boxes appear twice, the second run after the first.
DUPLICATED_JSON = (
    '{"berry.jpg211988":{"filename":"berry.jpg","size":211988,"regions":['
    + ",".join(['{"shape_attributes":{"name":"rect","x":%d,"y":%d,"width":%d,"height":%d},'
                '"region_attributes":{"labels":"strawberry"}}' % box
                for box in [(144, 425, 46, 54), (233, 401, 42, 38), (240, 211, 34, 30)] * 2])
    + '],"file_attributes":{}},"shapes.jpg55707":{"filename":"shapes.jpg","size":55707,"regions":['
    '{"shape_attributes":{"name":"polygon","all_points_x":[428,324,548],"all_points_y":[33,199,199]},'
    '"region_attributes":{"labels":"triangle"}},'
    '{"shape_attributes":{"name":"rect","x":144,"y":425,"width":46,"height":54},'
    '"region_attributes":{"labels":"strawberry"}}],"file_attributes":{}}}'
)


def test_duplicated_regions_in_a_json_export(tmp_path):
    df = read_annotations(write(tmp_path, "via_region_data.json", DUPLICATED_JSON))
    assert [r[:4] for r in rows(df)] == [
        ("berry.jpg", 0, "rect", (144, 425, 46, 54)), ("berry.jpg", 1, "rect", (233, 401, 42, 38)),
        ("berry.jpg", 2, "rect", (240, 211, 34, 30)), ("berry.jpg", 3, "rect", (144, 425, 46, 54)),
        ("berry.jpg", 4, "rect", (233, 401, 42, 38)), ("berry.jpg", 5, "rect", (240, 211, 34, 30)),
        ("shapes.jpg", 0, "polygon", (324, 33, 224, 166)),
        ("shapes.jpg", 1, "rect", (144, 425, 46, 54))]  # same box, other image: no duplicate
    assert df["duplicate"].tolist() == [False] * 3 + [True] * 3 + [False] * 2
    assert df.attrs["duplicate_regions"] == 3
    assert df["labels"].tolist() == ["strawberry"] * 6 + ["triangle", "strawberry"]


def test_training_data_leaves_the_duplicates_out(tmp_path):
    from cropclf.config import Config
    from cropclf.data.loading import load_frame

    path = write(tmp_path, "via_region_data.json", DUPLICATED_JSON)
    cfg = Config().replace(**{"data.annotations": str(path), "data.heads": ["labels"]})
    logged = []
    frame = load_frame(cfg, log=logged.append)
    assert frame["region_id"].tolist() == [0, 1, 2, 0, 1]
    assert frame.attrs["duplicates_dropped"] == 3
    assert any(line.startswith("3 duplicate region(s)") for line in logged)


# As the rice-leaf VIA 1 CSV: a polygon whose vertices all coincide (zero area) labelled "",
# a closed polygon labelled `{}`, and an ordinary one.
ZERO_POLYGON_CSV = (
    "#filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,"
    "region_attributes\n"
    'Brown_spot1.jpg,34372,"{}",3,0,"{""name"":""polygon"",""all_points_x"":[3,16,15,13,5,1,0,3],'
    '""all_points_y"":[11,24,30,36,38,37,13,11]}","{""class_id"":""brown_spot""}"\n'
    'Brown_spot1.jpg,34372,"{}",3,1,"{""name"":""polygon"",""all_points_x"":[31,31,31,31],'
    '""all_points_y"":[38,38,38,38]}","{""class_id"":""""}"\n'
    'Brown_spot1.jpg,34372,"{}",3,2,"{""name"":""polygon"",""all_points_x"":[20,28,39,20],'
    '""all_points_y"":[8,5,15,8]}","{}"'
)


def test_zero_size_polygon_is_read_as_an_empty_box(tmp_path):
    df = read_annotations(write(tmp_path, "via_region_data.csv", ZERO_POLYGON_CSV))
    assert df.attrs["format"] == "via1_csv"
    assert rows(df, "class_id") == [
        ("Brown_spot1.jpg", 0, "polygon", (0, 11, 16, 27), "brown_spot"),
        ("Brown_spot1.jpg", 1, "polygon", (31, 38, 0, 0), ""),
        ("Brown_spot1.jpg", 2, "polygon", (20, 5, 19, 10), "")]


def test_zero_size_polygon_is_left_out_of_cropping_with_its_row(tmp_path):
    from cropclf.data.patches import PatchStore

    image = (np.indices((48, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)  # sharp 40x48 checkerboard
    write_image(tmp_path / "Brown_spot1.jpg", np.repeat(image[..., None], 3, axis=2))
    df = read_annotations(write(tmp_path, "via_region_data.csv", ZERO_POLYGON_CSV))
    store = PatchStore(df, (16, 16), 0.15, 0.15, progress=False)
    assert [store.has(label) for label in df.index] == [True, False, True]
    [problem] = store.problems
    assert (Path(problem.file).name, problem.row) == ("Brown_spot1.jpg", "row 3")
    assert problem.reason.startswith("box 0x0 px is smaller than min_size=2")
