"""Tests for scripts/predict.py and cropclf.serving.prediction, on a SavedModel exported untrained."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, write_image
from fixtures_via import VIA_HEADER, via_csv_lines, via_json, write

from cropclf import read_annotations
from cropclf.data.labels import head_column

pytestmark = pytest.mark.slow

RECT_A = {"name": "rect", "x": 5, "y": 6, "width": 30, "height": 20}
# Non-square images (H x W): a 61x83, b 45x70; missing.png is never written.
IMAGES = [
    ("a.png", {"caption": "one"}, [
        (RECT_A, {"name": "a", "note": "keep me"}),
        ({"name": "point", "cx": 10, "cy": 10}, {"name": "b"}),  # no area: skipped
        ({"name": "rect", "x": 40, "y": 30, "width": 35, "height": 25}, {"name": "b", "type": "x"}),
    ]),
    ("b.png", {}, [
        ({"name": "polygon", "all_points_x": [2, 40, 20], "all_points_y": [3, 5, 40]},
         {"name": "a"}),
        ({"name": "rect", "x": 100, "y": 100, "width": 10, "height": 10}, {"name": "a"}),  # outside
    ]),
    ("missing.png", {}, [(RECT_A, {"name": "a"})]),  # no such image: skipped
    ("empty.png", {}, []),  # an image without regions
]
CLASSIFIED = {("a.png", 0), ("a.png", 2), ("b.png", 0)}
SKIPPED = {("a.png", 1), ("b.png", 1), ("missing.png", 0)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained two-head model (name: a/b, type: x/y) exported as a SavedModel."""
    from cropclf.config import Config, CropConfig, ModelConfig
    from cropclf.serving.export import export_saved_model
    from cropclf.data.labels import LabelMap
    from cropclf.model import build_model

    model = build_model(ModelConfig(width=8), (32, 32), {"name": 2, "type": 2})
    maps = {"name": LabelMap("name", ["a", "b"]), "type": LabelMap("type", ["x", "y"])}
    out = tmp_path_factory.mktemp("model") / "saved_model"
    return export_saved_model(model, maps, Config(crop=CropConfig(image_size=(32, 32))), out)


@pytest.fixture
def data(tmp_path):
    """The images and IMAGES as a VIA 2 CSV, a VIA 2 JSON and a VIA 1 JSON (dict regions)."""
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a.png", (61, 83)), ("b.png", (45, 70))):
        noise = rng.integers(0, 255, (h, w, 3), np.uint8)
        write_image(tmp_path / name, cv2.GaussianBlur(noise, (3, 3), 0))
    csv_text = VIA_HEADER + "\n" + "\n".join(via_csv_lines(IMAGES))
    return {"via2_csv": write(tmp_path, "via.csv", csv_text),
            "via2_json": write(tmp_path, "via2.json", via_json(IMAGES)),
            "via1_json": write(tmp_path, "via1.json", via_json(IMAGES, v1=True))}


def predict(*args, ok=True):
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def keys(frame):
    return set(zip(frame["filename"], frame["region_id"]))


def test_box_predictions_match_the_signature(model_dir, data, tmp_path):
    import tensorflow as tf

    from cropclf.data.images import load_image

    boxes = [[5, 6, 30, 20], [40.5, 30, 20, 12.25], [-3, -2, 20, 70]]
    done = predict("--model", model_dir, "--image", tmp_path / "a.png",
                   *(f"--box={','.join(map(str, b))}" for b in boxes))
    got = pd.read_csv(io.StringIO(done.stdout))
    assert list(got.columns) == ["filename", "region_id", "row", "x", "y", "width", "height",
                                 "name", "name_score", "type", "type_score"]
    np.testing.assert_allclose(got[["x", "y", "width", "height"]], boxes)
    want = tf.saved_model.load(str(model_dir)).signatures["classify_regions"](
        image=tf.constant(load_image(tmp_path / "a.png")), boxes=tf.constant(boxes, tf.float32))
    for head in ("name", "type"):
        assert got[head].tolist() == [b.decode() for b in want[f"{head}_label"].numpy()]
        np.testing.assert_allclose(got[f"{head}_score"], want[f"{head}_score"].numpy(), atol=1e-5)


def test_annotations_write_csv_and_json_and_list_skipped_regions(model_dir, data, tmp_path):
    done = predict("--model", model_dir, "--annotations", data["via2_csv"],
                   "--draw", tmp_path / "drawn")
    rows = pd.read_csv(io.StringIO(done.stdout))
    assert keys(rows) == CLASSIFIED and len(rows) == 3
    assert set(rows["name"]) <= {"a", "b"} and set(rows["type"]) <= {"x", "y"}
    assert ((rows["name_score"] >= 0.5) & (rows["name_score"] <= 1)).all()
    listed = [line for line in done.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(listed) == 3
    for line, reason in zip(listed, ("point or line", "wholly outside", "image file not found")):
        assert reason in line and "(row " in line
    assert "3 region(s) classified on 3 image(s), 3 skipped" in done.stderr

    predict("--model", model_dir, "--annotations", data["via2_csv"], "--out", tmp_path / "p.json")
    records = json.loads((tmp_path / "p.json").read_text())
    assert pd.DataFrame(records).to_dict("list") == rows.to_dict("list")

    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert drawn == ["a.png", "b.png"]
    for name in drawn:
        image = cv2.imread(str(tmp_path / "drawn" / name))
        assert image is not None and image.shape == cv2.imread(str(tmp_path / name)).shape


@pytest.mark.parametrize("variant", ["via2_csv", "via2_json", "via1_json"])
def test_via_out_round_trip(model_dir, data, tmp_path, variant):
    source, out = data[variant], tmp_path / f"predicted{data[variant].suffix}"
    predict("--model", model_dir, "--annotations", source, "--via-out", out, "--keep-order",
            "--out", tmp_path / "p.csv")
    pred = pd.read_csv(tmp_path / "p.csv").set_index(["filename", "region_id"])
    before, after = read_annotations(source), read_annotations(out)
    assert after.attrs["format"] == before.attrs["format"] == variant
    fixed = ["filename", "region_id", "shape", "x", "y", "width", "height", "file:caption"]
    pd.testing.assert_frame_equal(after[fixed], before[fixed])
    assert after["note"].tolist() == before["note"].tolist()  # other attributes stay
    for i in range(len(after)):
        key = (after["filename"][i], after["region_id"][i])
        for head in ("name", "type"):
            kept = before[head_column(before, head)][i]
            want = (kept or pred.loc[key, head]) if key in CLASSIFIED else kept  # human labels stay
            assert after[head_column(after, head)][i] == want, (key, head)
            beside = pred.loc[key, head] if key in CLASSIFIED else ""
            assert after[f"{head}_predicted"][i] == beside, (key, head)

    if variant == "via2_csv":  # VIA's style: only the classified rows' last cell changes
        old, new = source.read_text().split("\n"), out.read_text().split("\n")
        assert not out.read_text().endswith("\n") and len(new) == len(old) and new[0] == old[0]
        changed = [k for k, (a, b) in enumerate(zip(old, new)) if a != b]
        assert changed == [1, 3, 4]
        assert all(a.rsplit(',"{', 1)[0] == b.rsplit(',"{', 1)[0] for a, b in zip(old, new))
    else:
        raw = json.loads(out.read_text())
        assert isinstance(raw["a.png100"]["regions"], dict if variant == "via1_json" else list)


def test_via_out_least_sure_first_only_below_and_review_sheet(model_dir, data, tmp_path):
    out, sheet = tmp_path / "review.csv", tmp_path / "review.png"
    done = predict("--model", model_dir, "--annotations", data["via2_csv"], "--out", tmp_path / "p.csv",
                   "--via-out", out, "--only-below", "1", "--review-sheet", sheet)
    pred = pd.read_csv(tmp_path / "p.csv")
    assert {"name_second", "name_second_score", "type_second", "type_second_score"} <= set(pred.columns)
    assert (pred["name_second_score"] <= pred["name_score"]).all() and (pred["name_second"] != pred["name"]).all()
    lowest = pred.assign(s=pred[["name_score", "type_score"]].min(axis=1)).groupby("filename")["s"].min()
    after = read_annotations(out)
    assert after.attrs["images"] == lowest.sort_values(kind="stable").index.tolist()  # a, b: missing.png,
    assert "skipped" in done.stderr  # empty.png hold nothing classified, so --only-below leaves them out
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[0] > 64 and image.shape[1] > 64
    reread = predict("--model", model_dir, "--annotations", data["via2_csv"], "--via-out", tmp_path / "x.csv",
                     "--only-below", "2", ok=False)
    assert reread.returncode == 2 and "--only-below takes a score in (0, 1]" in reread.stderr


def test_via_project_gets_option_ids_and_text_definitions(tmp_path):
    from cropclf.via.writer import write_via

    dropdown = {"type": "dropdown", "description": "", "options": {"0": "x", "1": "y"}}
    project = {"_via_settings": {"core": {"default_filepath": ""}, "project": {"name": "p"}},
               "_via_img_metadata": via_json(IMAGES),
               "_via_attributes": {"region": {"type": dropdown}, "file": {}}}
    source = write(tmp_path, "project.json", project)
    frame = read_annotations(source)
    assert frame.attrs["format"] == "via2_project"
    pred = pd.DataFrame({"name": ["b"], "name_score": [0.6], "type": ["y"], "type_score": [0.7]}, index=[0])
    write_via(source, tmp_path / "out.json", frame, pred, ["name", "type"])
    raw = json.loads((tmp_path / "out.json").read_text())
    assert raw["_via_attributes"]["region"]["name"]["type"] == "text"
    assert raw["_via_img_metadata"]["a.png100"]["regions"][0]["region_attributes"] == {
        "name": "a", "note": "keep me", "type": "1",  # the human's name stays; the dropdown's option id
        "name_predicted": "b", "name_score": "0.6000", "type_predicted": "y", "type_score": "0.7000"}
    back = read_annotations(tmp_path / "out.json")
    assert back.loc[0, "type"] == "y" and back.loc[0, "name"] == "a" and back.loc[0, "name_predicted"] == "b"


def test_flat_csv_gets_its_head_columns_filled(tmp_path):
    from cropclf.via.writer import write_via

    shape = json.dumps(RECT_A).replace('"', '""')
    text = f'filename,name,region_shape_attributes\na.png,a,"{shape}"\na.png,a,"{shape}"\n'
    source = write(tmp_path, "flat.csv", text)
    pred = pd.DataFrame({"name": ["b"], "name_score": [0.5], "type": ["y"], "type_score": [0.9]},
                        index=[1])  # the second region only
    write_via(source, tmp_path / "out.csv", read_annotations(source), pred, ["name", "type"])
    back = read_annotations(tmp_path / "out.csv")
    assert back.attrs["format"] == "flat_csv"
    assert back["name"].tolist() == ["a", "a"] and back["type"].tolist() == ["", "y"]  # "a" was a person's
    assert back["name_predicted"].tolist() == ["", "b"] and back["type_score"].tolist() == ["", "0.9000"]


@pytest.mark.parametrize("args, received", [
    (["--box", "1,2,3"], "Received: --box 1,2,3"),
    (["--box", "1,2,x,4"], "Received: --box 1,2,x,4"),
    (["--box", "1,2,-3,4"], "Received: --box 1,2,-3,4"),
    (["--image", "nope.png", "--box", "1,2,3,4"], "image file not found"),
    (["--model", "."], "Received: --model ."),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, data, args, received):
    argv = {"--model": tmp_path / "no_model", "--image": tmp_path / "a.png", "--box": "1,2,3,4"}
    for flag, value in zip(args[::2], args[1::2]):
        argv[flag] = tmp_path / value if flag == "--image" else value
    done = predict(*(x for kv in argv.items() for x in kv), ok=False)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and received in errors[0], done.stderr
    assert "Traceback" not in done.stderr


# Runs in a fresh interpreter with Keras (and albumentations) unimportable, as on a machine that
# only serves: `sys.modules[name] = None` makes both `import keras` and TensorFlow's
# `importlib.util.find_spec("keras")` answer "not installed".
_WITHOUT_KERAS = """
import json, runpy, sys
for name in ("keras", "tf_keras", "albumentations"):
    sys.modules[name] = None
import cropclf.serving.prediction
modules = sorted(m for m in sys.modules if sys.modules[m] is not None)
print(json.dumps(modules), file=sys.stderr)
sys.argv = ["predict.py", *sys.argv[1:]]
runpy.run_path("scripts/predict.py", run_name="__main__")
"""


def test_prediction_module_needs_no_keras(model_dir, data):
    # With Keras installed, `import tensorflow` itself loads parts of it (keras.src.*), so the
    # check is that serving works where Keras cannot be imported at all.
    done = subprocess.run([sys.executable, "-c", _WITHOUT_KERAS, "--model", str(model_dir),
                           "--annotations", str(data["via2_csv"])],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    modules = json.loads(next(line for line in done.stderr.splitlines() if line.startswith("[")))
    # Importing cropclf.serving.prediction loads OpenCV, Pillow, numpy and pandas, not even TensorFlow
    # (it waits for a model), and nothing of training.
    top = {m.split(".")[0] for m in modules}
    assert {"cv2", "PIL", "numpy", "pandas"} <= top and not {"tensorflow", "keras", "albumentations"} & top
    assert not {"cropclf.model", "cropclf.training", "cropclf.data.sequence", "cropclf.serving.export",
                "cropclf.data.augment", "cropclf.data.patches"} & set(modules)
    table = pd.read_csv(io.StringIO(done.stdout))
    assert table.columns.tolist()[-4:] == ["name", "name_score", "type", "type_score"]
    assert set(zip(table["filename"], table["region_id"])) == CLASSIFIED and len(table) == 3
    assert set(table["name"]) <= {"a", "b"} and set(table["type"]) <= {"x", "y"}


def test_min_size_comes_from_the_models_metadata(tmp_path):
    """Prediction leaves out what training left out, by the exported model's own crop.min_size, even
    without the run's config file beside it (exports before this carried only assets.extra/config.json)."""
    import shutil

    from cropclf.config import Config, CropConfig, ModelConfig
    from cropclf.data.labels import LabelMap
    from cropclf.model import build_model
    from cropclf.serving.export import export_saved_model
    from cropclf.serving.prediction import Classifier, predict_regions, regions_from_boxes

    model = build_model(ModelConfig(width=4), (32, 32), {"name": 2})
    cfg = Config(crop=CropConfig(image_size=(32, 32), min_size=7.0))
    out = Path(export_saved_model(model, {"name": LabelMap("name", ["a", "b"])}, cfg, tmp_path / "m")).resolve()
    served = tmp_path / "served"
    shutil.copytree(out, served)
    shutil.rmtree(served / "assets.extra")
    clf = Classifier(served)
    assert clf.min_size == 7.0 and clf.preprocessing["min_size"] == 7.0
    write_image(tmp_path / "a.png", np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    frame = regions_from_boxes(tmp_path / "a.png", ["2,2,6,20", "2,2,8,20"])
    predictions, skipped = predict_regions(clf, frame, progress=False)
    assert len(predictions) == 1 and [p.kind for p in skipped] == ["too_small"]
    assert "smaller than min_size=7" in skipped[0].reason
