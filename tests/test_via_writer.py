"""Writing predictions back into every annotation format without losing a human label (no model)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fixtures_via import VIA_HEADER, cell, via_csv_lines, via_json, write

from cropclf import read_annotations
from cropclf.via.writer import write_via

R = [{"name": "rect", "x": 5 + 9 * k, "y": 6, "width": 30, "height": 20 + k} for k in range(6)]
# Human labels on some regions, some heads only; b.png's and c.png's second region have none.
IMAGES = [
    ("a.png", {"caption": "one"}, [
        (R[0], {"name": "swan", "note": "keep me"}),  # name given, type not
        (R[1], {"name": "", "type": "", "note": "x"}),  # nothing given
        (R[2], {"name": "goose", "type": "bird"}),  # both given
    ]),
    ("b.png", {"caption": "two"}, [(R[3], {})]),
    ("c.png", {}, [(R[4], {"name": "duck"}), (R[5], {})]),
    ("empty.png", {"caption": "none"}, []),
]
# (filename, region_id) -> (name, name score, type, type score) as a model would say.
PRED = {("a.png", 0): ("triangle", 0.9, "red", 0.8), ("a.png", 1): ("circle", 0.95, "blue", 0.9),
        ("a.png", 2): ("star", 0.7, "green", 0.6), ("b.png", 0): ("circle", 0.3, "red", 0.99),
        ("c.png", 0): ("cross", 0.5, "blue", 0.97), ("c.png", 1): ("star", 0.99, "red", 0.98)}
LEAST_SURE_FIRST = ["b.png", "c.png", "a.png", "empty.png"]  # by each image's lowest score
HEADS = ["name", "type"]
DROPDOWN = {"type": "dropdown", "description": "kind", "options": {"0": "bird", "1": "red"},
            "default_options": {}}


def project(images):
    ids = [f"{f}100" for f, _, _ in images]
    metadata = via_json(images)
    for entry in metadata.values():  # a project stores the dropdown's option id, not its label
        for region in entry["regions"]:
            region["region_attributes"] = {k: {"bird": "0"}.get(v, v) if k == "type" else v
                                           for k, v in region["region_attributes"].items()}
    return {"_via_settings": {"core": {"default_filepath": ""}, "project": {"name": "p"}},
            "_via_img_metadata": metadata, "_via_attributes": {
                "region": {"name": {"type": "text", "description": "", "default_value": ""},
                           "note": {"type": "text", "description": "", "default_value": ""},
                           "type": DROPDOWN},
                "file": {"caption": {"type": "text", "description": "", "default_value": ""}}},
            "_via_data_format_version": "2.0.10", "_via_image_id_list": ids}


def flat(images):
    lines = ["filename,name,type,note,region_shape_attributes"]
    for filename, _, regions in images:
        for shape, attrs in regions:
            lines.append(",".join([filename, *(attrs.get(c, "") for c in ("name", "type", "note")), cell(shape)]))
    return "\n".join(lines) + "\n"


SOURCES = {
    "via2_csv": lambda d: write(d, "via.csv", VIA_HEADER + "\n" + "\n".join(via_csv_lines(IMAGES))),
    "via1_csv": lambda d: write(d, "via1.csv", "#" + VIA_HEADER + "\n" + "\n".join(via_csv_lines(IMAGES))),
    "via2_json": lambda d: write(d, "via2.json", via_json(IMAGES)),
    "via1_json": lambda d: write(d, "via1.json", via_json(IMAGES, v1=True)),
    "via2_project": lambda d: write(d, "project.json", project(IMAGES)),
    "flat_csv": lambda d: write(d, "flat.csv", flat(IMAGES)),
}


def predictions(frame):
    rows = {i: PRED[(frame.at[i, "filename"], frame.at[i, "region_id"])] for i in frame.index}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["name", "name_score", "type", "type_score"])


def by_region(frame):
    return frame.set_index(["filename", "region_id"])


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_human_labels_stay_and_predictions_go_beside_them(tmp_path, fmt):
    source = SOURCES[fmt](tmp_path)
    before = read_annotations(source)
    assert before.attrs["format"] == fmt
    out = write_via(source, tmp_path / f"out{source.suffix}", before, predictions(before), HEADS)
    after = read_annotations(out)
    assert after.attrs["format"] == fmt
    assert sorted(after.attrs["images"]) == sorted(before.attrs["images"])
    old, new = by_region(before), by_region(after)
    assert sorted(new.index) == sorted(old.index)
    new = new.loc[old.index]
    fixed = ["shape", "x", "y", "width", "height", "note", *(c for c in old if c.startswith("file:"))]
    pd.testing.assert_frame_equal(new[fixed], old[fixed])  # shapes, other and file attributes stay
    for key, (name, name_score, type_, type_score) in PRED.items():
        for head, label, score in (("name", name, name_score), ("type", type_, type_score)):
            human = old.at[key, head]
            assert new.at[key, head] == (human or label), (key, head)  # a human label is never touched
            assert new.at[key, f"{head}_predicted"] == label
            assert float(new.at[key, f"{head}_score"]) == pytest.approx(score)
    # the demo's own case: the human "swan" stays, "triangle" goes beside it
    assert new.at[("a.png", 0), "name"] == "swan" and new.at[("a.png", 0), "name_predicted"] == "triangle"


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_images_come_least_sure_first_or_in_file_order(tmp_path, fmt):
    source = SOURCES[fmt](tmp_path)
    frame = read_annotations(source)
    first = write_via(source, tmp_path / f"sorted{source.suffix}", frame, predictions(frame), HEADS)
    kept = write_via(source, tmp_path / f"kept{source.suffix}", frame, predictions(frame), HEADS,
                     least_sure_first=False)
    want = [f for f in LEAST_SURE_FIRST if f in frame.attrs["images"]]  # a flat CSV has no empty image
    assert read_annotations(first).attrs["images"] == want
    assert read_annotations(kept).attrs["images"] == frame.attrs["images"]
    if fmt == "via2_project":
        raw = json.loads(first.read_text())
        assert raw["_via_image_id_list"] == [f"{f}100" for f in want] == list(raw["_via_img_metadata"])
    if fmt.endswith("csv"):  # each image's rows stay together, in their order
        rows = read_annotations(first)
        assert rows["filename"].tolist() == sorted(rows["filename"], key=want.index)
        assert rows.groupby("filename")["region_id"].apply(list).to_dict() == \
            frame.groupby("filename")["region_id"].apply(list).to_dict()


@pytest.mark.parametrize("fmt", list(SOURCES))
def test_only_below_keeps_images_needing_a_look_and_marks_only_their_low_regions(tmp_path, fmt):
    source = SOURCES[fmt](tmp_path)
    frame = read_annotations(source)
    out = write_via(source, tmp_path / f"low{source.suffix}", frame, predictions(frame), HEADS, only_below=0.55)
    after = read_annotations(out)
    assert after.attrs["images"] == ["b.png", "c.png"]  # a.png's lowest is 0.6; empty.png has nothing
    new = by_region(after)
    assert sorted(new.index) == [("b.png", 0), ("c.png", 0), ("c.png", 1)]  # all their regions stay
    assert new.at[("b.png", 0), "name"] == "circle" and new.at[("b.png", 0), "name_score"] == "0.3000"
    assert new.at[("c.png", 0), "name"] == "duck" and new.at[("c.png", 0), "name_predicted"] == "cross"
    # c.png's second region is sure (0.98): left as it was, unlabelled and unannotated
    assert new.at[("c.png", 1), "name"] == "" and new.at[("c.png", 1), "name_predicted"] == ""


@pytest.mark.parametrize("fmt", ["via2_csv", "via2_project", "flat_csv"])
def test_overwrite_labels_is_explicit(tmp_path, fmt):
    source = SOURCES[fmt](tmp_path)
    frame = read_annotations(source)
    out = write_via(source, tmp_path / f"over{source.suffix}", frame, predictions(frame), HEADS,
                    overwrite_labels=True)
    new = by_region(read_annotations(out))
    for key, (name, _, type_, _) in PRED.items():
        assert (new.at[key, "name"], new.at[key, "type"]) == (name, type_)


def test_project_declares_the_new_attributes_and_keeps_its_definitions(tmp_path):
    source = SOURCES["via2_project"](tmp_path)
    frame = read_annotations(source)
    out = write_via(source, tmp_path / "out.json", frame, predictions(frame), HEADS)
    old, raw = json.loads(source.read_text()), json.loads(out.read_text())
    region = raw["_via_attributes"]["region"]
    for head in HEADS:
        for suffix in ("_predicted", "_score"):
            assert region[head + suffix]["type"] == "text" and region[head + suffix]["description"]
    for name, spec in old["_via_attributes"]["region"].items():  # definitions stay; a dropdown
        assert {k: v for k, v in region[name].items() if k != "options"} == \
            {k: v for k, v in spec.items() if k != "options"}  # may only gain a predicted class
        assert old_options_kept(spec, region[name])
    assert raw["_via_attributes"]["file"] == old["_via_attributes"]["file"]
    assert raw["_via_settings"] == old["_via_settings"]
    assert raw["_via_data_format_version"] == "2.0.10"
    regions = {e["filename"]: e["regions"] for e in raw["_via_img_metadata"].values()}
    assert regions["a.png"][2]["region_attributes"]["type"] == "0"  # the human's option id, untouched
    assert regions["a.png"][2]["region_attributes"]["type_predicted"] == "green"  # text: the label


def old_options_kept(old: dict, new: dict) -> bool:
    return all(new.get("options", {}).get(k) == v for k, v in old.get("options", {}).items())


def test_via_csv_keeps_vias_style(tmp_path):
    source = SOURCES["via2_csv"](tmp_path)
    frame = read_annotations(source)
    out = write_via(source, tmp_path / "out.csv", frame, predictions(frame), HEADS, least_sure_first=False)
    old, new = source.read_text().split("\n"), out.read_text().split("\n")
    assert not out.read_text().endswith("\n") and len(new) == len(old) and new[0] == old[0]
    assert [a.rsplit(',"{', 1)[0] for a in old] == [b.rsplit(',"{', 1)[0] for b in new]
    assert [k for k, (a, b) in enumerate(zip(old, new)) if a != b] == [1, 2, 3, 4, 5, 6]
