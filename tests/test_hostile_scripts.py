"""Hostile input: every bad input gets correct handling or an error naming file, row and value.

A representative subset of the bad inputs of test_hostile_via.py and test_hostile_data.py fed to every
script, which must print one ``error:`` line per problem and exit non-zero, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, read_json
from fixtures_via import VIA_HEADER, cell, csv_row, write

from cropclf import read_annotations

from hostile_inputs import (CANARY, ODD_LABELS, RECT, raw_rect,
                            rect)


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
