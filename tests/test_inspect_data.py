"""scripts/inspect_data.py and cropclf.inspection on a VIA 2 CSV with one problem of each kind."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO, write_image
from fixtures_via import VIA_HEADER, csv_row, write

from cropclf.config import Config
from cropclf.data.loading import load_frame
from cropclf.inspection import inspect_dataset
from cropclf.data.splits import split_by_image

SCRIPT = REPO / "scripts" / "inspect_data.py"

# (file, file attributes, region count, region id, shape, region attributes); CSV rows start at 2.
ROWS = [
    ("a.png", {}, 5, 0, {"name": "rect", "x": 10, "y": 10, "width": 30, "height": 20},
     {"name": "cat", "type": "pet"}),                                             # row 2: fine
    ("a.png", {}, 5, 1, {"name": "rect", "x": 70, "y": 40, "width": 40, "height": 30},
     {"name": "cat", "type": "pet"}),                                             # row 3: part out
    ("a.png", {}, 5, 2, {"name": "point", "cx": 5, "cy": 5},
     {"name": "dog", "type": "pet"}),                                             # row 4: a point
    ("a.png", {}, 5, 3, {"name": "rect", "x": 10, "y": 10, "width": 30, "height": 20},
     {"name": "cat", "type": "pet"}),                                             # row 5: duplicate
    ("a.png", {}, 5, 4, {"name": "rect", "x": 40, "y": 5, "width": 1.5, "height": 30},
     {"name": "Cat", "type": "pet"}),                                             # row 6: too small
    ("b.png", {}, 3, 0, {"name": "rect", "x": 100, "y": 100, "width": 10, "height": 10},
     {"name": "dog", "type": "wild"}),                                            # row 7: outside
    ("b.png", {}, 3, 1, {"name": "rect", "x": 5, "y": 5, "width": 20, "height": 20},
     {"type": "wild"}),                                                           # row 8: no name
    ("b.png", {}, 3, 2, {"name": "rect", "x": 2, "y": 20, "width": 30, "height": 25},
     '{"name":"dog","type":undefined}'),                                          # row 9: undefined
    ("gone.png", {}, 1, 0, {"name": "rect", "x": 1, "y": 1, "width": 9, "height": 9},
     {"name": "cat", "type": "pet"}),                                             # row 10: missing
    ("broken.png", {}, 1, 0, {"name": "rect", "x": 1, "y": 1, "width": 9, "height": 9},
     {"name": "dog", "type": "pet"}),                                             # row 11: broken
    ("c.png", {}, 0, 0, {}, {}),                                                  # row 12: none
]
EXPECTED = [  # (kind, file, row) that must be reported
    ("partly_outside", "a.png", "row 3"),
    ("zero_area", "a.png", "row 4"),
    ("duplicate", "a.png", "row 5"),
    ("too_small", "a.png", "row 6"),
    ("outside_image", "b.png", "row 7"),
    ("unlabelled", "b.png", "row 8"),
    ("unlabelled", "b.png", "row 9"),  # `undefined` reads as no label
    ("missing_image", "gone.png", "row 10"),
    ("unreadable_image", "broken.png", "row 11"),
    ("undefined", "via.csv", ""),
    ("label_variants", "via.csv", ""),
]


@pytest.fixture
def dataset(tmp_path):
    """A VIA 2 CSV over two non-square images (60x90, 50x40), a missing and a broken one."""
    rng = np.random.default_rng(0)
    for name, hw in (("a.png", (60, 90)), ("b.png", (50, 40)), ("c.png", (30, 20))):
        write_image(tmp_path / name, rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
    write(tmp_path, "broken.png", b"\x89PNG\r\n\x1a\n this is not really a PNG")
    lines = [VIA_HEADER, *(csv_row(*row) for row in ROWS)]
    return write(tmp_path, "via.csv", "\n".join(lines) + "\n")


def _cfg(path, **overrides):
    return Config().replace(**{"data.annotations": str(path), **overrides})


def test_every_problem_is_reported_with_its_file_and_row(dataset, tmp_path):
    lines = []
    report = inspect_dataset(_cfg(dataset), tmp_path / "out", log=lines.append, progress=False)
    found = {(p["kind"], p["file"], p["row"]) for p in report["problems"]}
    assert set(EXPECTED) <= found
    assert ("unlabelled", "a.png", "row 2") not in found  # a good region is not a problem
    printed = "\n".join(lines)
    for kind, file, row in EXPECTED:  # one printed line per problem, naming file and row
        at = f"{file} ({row})" if row else f"{file}:"
        assert any(kind.replace("_", " ") in line and at in line for line in lines), (kind, printed)
    assert "same image, shape and labels as row 2" in printed
    assert "right 20 px, bottom 10 px" in printed
    assert "'Cat' (1), 'cat' (4)" in printed

    assert report["format"] == "via2_csv"
    assert report["images"] == {"in_file": 5, "with_regions": 4, "without_regions": 1,
                                "missing": 1, "unreadable": 1}
    assert report["regions"] == 10 and report["shapes"] == {"rect": 9, "point": 1}
    assert report["duplicates"] == 1
    # Left out of training: point, duplicate, too small, wholly outside, missing, unreadable.
    assert report["left_out_of_training"] == 6
    assert set(report["heads"]) == {"name", "type"}
    for head in ("name", "type"):  # row 8 has no name; row 9's type is `undefined`
        assert sum(report["heads"][head]["classes"]["(unlabelled)"].values()) == 1
    assert sum(report["heads"]["type"]["classes"]["pet"].values()) == 7
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["problems"] == report["problems"]
    sheet = cv2.imread(str(tmp_path / "out" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 300 and sheet.shape[1] >= 760


def test_split_is_the_one_training_makes(dataset, tmp_path):
    cfg = _cfg(dataset, **{"train.seed": 3})
    report = inspect_dataset(cfg, tmp_path / "out", log=lambda *a: None, progress=False)
    assignment, _ = split_by_image(load_frame(cfg, log=lambda *a: None), cfg.data.heads,
                                   cfg.data.split, cfg.train.seed)
    counts = {s: sum(v == s for v in assignment.values()) for s in ("train", "val", "test")}
    assert report["split"]["images"] == counts and report["split"]["seed"] == 3


def test_missing_head_is_a_problem_not_an_error(dataset, tmp_path):
    cfg = _cfg(dataset, **{"data.heads": ["name", "colour"]})
    report = inspect_dataset(cfg, tmp_path / "out", log=lambda *a: None, progress=False)
    assert [p["message"] for p in report["problems"] if p["kind"] == "missing_head"] == [
        "no attribute 'colour' to use as a head; pass --heads with some of ['name', 'type']. "
        "Received: 'colour'"]
    assert set(report["heads"]) == {"name"}


def _script(*args, cwd):
    return subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_script_reports_problems_and_writes_a_sheet(dataset, tmp_path):
    out = tmp_path / "inspected"
    done = _script("--annotations", dataset, "--heads", "name,type", "--out", out, "--per-class", 3,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "tensorflow" not in done.stderr and "keras" not in done.stderr  # -X importtime lists all
    lines = done.stdout.splitlines()
    for kind, file, row in EXPECTED:
        at = f"{file} ({row}):" if row else f"{file}:"
        assert any(line.startswith(f"  {kind.replace('_', ' '):<17} {at}") for line in lines), kind
    assert f"Annotations: {dataset} (via2_csv)" in lines
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.ndim == 3
    assert json.loads((out / "report.json").read_text())["contact_sheet"]["per_class"] == 3


def test_script_default_out_is_named_after_the_annotations(dataset, tmp_path):
    done = _script("--annotations", dataset, "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "inspect" / "via" / "contact_sheet.png").is_file()


def test_script_malformed_csv_is_a_one_line_error(tmp_path):
    broken_json = '"{""name"":""rect""'  # the shape cell's JSON is cut short
    bad = write(tmp_path, "bad.csv", f"{VIA_HEADER}\na.png,1,{{}},1,0,{broken_json},{{}}\n")
    done = _script("--annotations", bad, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.csv" in errors[0] and "row 2" in errors[0], done.stderr
    assert not (tmp_path / "inspect").exists()
