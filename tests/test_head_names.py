"""Head names as VIA holds them (spaces, digits, slashes, non-Latin text) train, evaluate, export and predict.

The rule head -> output key lives in `cropclf.data.labels.output_keys`; everything else (targets and
sample weights, the model's outputs, history, the SavedModel's outputs and its metadata) follows it,
while labels.json, reports, predictions and the VIA write-back keep the head's own name.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, regions_frame, write_image
from cropclf.errors import ConfigError
from cropclf.data.labels import LabelMap, output_keys
from fixtures_via import VIA_HEADER, csv_row

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CROPCLF_QUIET": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize("heads, keys", [
    (["name", "type"], ["name", "type"]),
    (["Class Name"], ["class_name"]),
    (["colour/shade"], ["colour_shade"]),
    (["  Colour -- Group!  "], ["colour_group"]),
    (["2"], ["head_1"]),  # starts with a digit
    (["name", "3d"], ["name", "head_2"]),
    (["цвет"], ["head_1"]),  # nothing ASCII left
    (["種類", "type"], ["head_1", "type"]),
    (["name", "Name", "na me"], ["name", "head_2", "na_me"]),  # collisions: the earlier head keeps the key
    (["na me", "na_me", "NA-ME"], ["na_me", "head_2", "head_3"]),
    (["head_2", "x"], ["head_1", "x"]),  # the fallback's own form is reserved
    (["x", "head 1"], ["x", "head_2"]),
    (["a" * 80], ["a" * 40]),
    (["Image", "trunk", "image 2"], ["head_1", "head_2", "image_2"]),  # the model's own layer names
])
def test_output_key_rule(heads, keys):
    assert list(output_keys(heads).values()) == keys
    assert list(output_keys(heads)) == heads


def test_output_keys_are_distinct_identifiers_for_any_names():
    rng = np.random.default_rng(0)
    alphabet = list("aAbB _-/.0123456789цвет種類é") + ["head_", "head_1", "Head 2"]
    for _ in range(300):
        names = ("".join(rng.choice(alphabet, rng.integers(1, 5))) for _ in range(rng.integers(1, 6)))
        heads = list(dict.fromkeys(n for n in names if n.strip()))
        keys = list(output_keys(heads).values())
        assert len(set(keys)) == len(keys), heads
        assert all(re.fullmatch(r"[a-z][a-z0-9_]{0,39}", k) for k in keys), (heads, keys)


def test_output_keys_refuse_blank_head_names():
    with pytest.raises(ConfigError, match="Received"):
        output_keys(["name", ""])


HOSTILE = ["Class Name", "2", "colour/shade", "цвет", "name", "Name", "na me"]


def _hostile_frame(tmp_path, heads, n_images=3):
    """Small non-square images with 4 regions each; every head has 2 classes."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n_images):
        image = np.where(rng.random((40 + 6 * i, 56, 3)) < 0.5, 0, 255).astype(np.uint8)
        path = str(write_image(tmp_path / f"im{i}.png", image))
        for k in range(4):
            rows.append({"path": path, "x": 2 + 10 * k, "y": 3, "width": 9, "height": 20 + k,
                         **{h: f"{h}-{(k + j) % 2}" for j, h in enumerate(heads)}})
    frame = regions_frame(rows)
    frame.attrs["region_attributes"] = list(heads)
    return frame


def test_sequence_keys_targets_and_weights_by_output_key(tmp_path):
    from cropclf.config import CropConfig
    from cropclf.data.sequence import CropSequence

    frame = _hostile_frame(tmp_path, HOSTILE)
    maps = {h: LabelMap.from_frame(frame, h) for h in HOSTILE}
    weights = {h: np.ones(2, np.float32) for h in HOSTILE}
    seq = CropSequence(frame, maps, 5, CropConfig(image_size=(24, 32)), class_weights=weights, progress=False)
    _, y, w = seq[0]
    keys = list(output_keys(HOSTILE).values())
    assert list(y) == keys and list(w) == keys
    assert seq.labels.keys() == set(HOSTILE)  # labels stay by head: evaluation reports by head


def test_fit_with_hostile_head_names(tmp_path):
    """Through `model.fit`: targets and sample weights find the model's outputs (TypeError before)."""
    from cropclf.config import CropConfig, ModelConfig
    from cropclf.model import build_model, compile_model
    from cropclf.data.sequence import CropSequence

    frame = _hostile_frame(tmp_path, HOSTILE)
    maps = {h: LabelMap.from_frame(frame, h) for h in HOSTILE}
    seq = CropSequence(frame, maps, 6, CropConfig(image_size=(24, 32)), class_weights={h: np.ones(2) for h in HOSTILE},
                       progress=False)
    model = compile_model(build_model(ModelConfig(width=4), (24, 32), {h: 2 for h in HOSTILE}), 1e-3)
    assert list(model.output) == list(output_keys(HOSTILE).values())
    history = model.fit(seq, epochs=1, verbose=0).history
    assert {"class_name_loss", "head_2_accuracy", "colour_shade_loss", "head_4_loss", "name_loss",
            "head_6_loss", "na_me_accuracy"} <= set(history)


def _write_via_csv(tmp_path, heads):
    """A VIA 2.x CSV over 4 images (train/val/test need whole images), 4 regions each."""
    rng = np.random.default_rng(2)
    lines = [VIA_HEADER]
    for i in range(6):
        image = np.where(rng.random((36 + 4 * i, 60, 3)) < 0.5, 0, 255).astype(np.uint8)
        image[:, :30, i % 3] = 255  # something for the heads to learn from
        write_image(tmp_path / f"p{i}.png", image)
        for k in range(4):
            shape = {"name": "rect", "x": 3 + 13 * k, "y": 2, "width": 11, "height": 18 + k}
            attrs = {h: f"{h} {(k + j + i) % 2}" for j, h in enumerate(heads)}
            lines.append(csv_row(f"p{i}.png", {}, 4, k, shape, attrs))
    path = tmp_path / "via.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("heads", [["Class Name", "2", "цвет"], ["name", "Name", "na me", "colour/shade"]],
                         ids=["space-digit-cyrillic", "colliding-slash"])
def test_train_evaluate_export_predict(tmp_path, heads):
    import tensorflow as tf

    from cropclf.config import Config
    from cropclf.evaluation import evaluate_run
    from cropclf.serving.prediction import Classifier, predict_regions, write_predictions
    from cropclf.training import train
    from cropclf.via import read_annotations
    from cropclf.via.writer import write_via

    via = _write_via_csv(tmp_path, heads)
    cfg = Config().replace(**{"data.annotations": str(via), "data.heads": heads, "data.split": [0.5, 0.25, 0.25],
                              "crop.image_size": [24, 32], "model.width": 4, "train.epochs": 1,
                              "train.batch_size": 8, "train.workers": 1})
    run = train(cfg, tmp_path / "run", log=lambda *a: None)
    keys = output_keys(heads)

    assert list(json.loads((run / "labels.json").read_text("utf-8"))) == heads
    history = json.loads((run / "history.json").read_text("utf-8"))
    assert all(f"{k}_loss" in history for k in keys.values())

    report = evaluate_run(run, log=lambda *a: None)
    assert list(report["heads"]) == heads
    for key in keys.values():
        assert (run / "evaluation" / f"confusion_{key}.png").is_file()
    saved = json.loads((run / "evaluation" / "report.json").read_text("utf-8"))
    assert list(saved["heads"]) == heads and list(saved["serving_agreement"]) == heads

    # A client without cropclf: the metadata maps each head to its outputs.
    loaded = tf.saved_model.load(str(run / "saved_model"))
    meta = json.loads(loaded.signatures["metadata"]()["heads_json"].numpy().decode("utf-8"))
    assert [m["head"] for m in meta] == heads and [m["key"] for m in meta] == list(keys.values())
    image = np.zeros((40, 60, 3), np.uint8)
    for sig in ("classify_regions", "serving_default"):
        outputs = loaded.signatures[sig].structured_outputs
        assert {o for m in meta for o in (m["label"], m["score"], m["probabilities"])} == set(outputs)
    out = loaded.signatures["classify_regions"](image=tf.constant(image), boxes=tf.constant([[1, 2, 20, 20.0]]))
    for m in meta:
        assert out[m["label"]].numpy()[0].decode("utf-8") in m["classes"]
        assert out[m["probabilities"]].shape == (1, len(m["classes"]))

    clf = Classifier(run / "saved_model")
    assert clf.heads == heads
    frame = read_annotations(via)
    predictions, skipped = predict_regions(clf, frame)
    assert not skipped and len(predictions) == 24
    for h in heads:
        assert set(predictions[h]) <= {f"{h} 0", f"{h} 1"} and predictions[f"{h}_score"].between(0, 1).all()
    write_predictions(predictions, tmp_path / "pred.json")
    record = json.loads((tmp_path / "pred.json").read_text("utf-8"))[0]
    assert all(h in record and f"{h}_score" in record for h in heads)
    write_via(via, tmp_path / "back.csv", frame, predictions, clf.heads)
    back = read_annotations(tmp_path / "back.csv")
    key = ["filename", "region_id"]  # the file comes back least-sure image first: match regions by key
    back, given, predicted = (t.set_index(key).sort_index() for t in (back, frame, predictions))
    for h in heads:  # human labels kept under the head's own name, predictions beside them
        assert (back[h] == given[h]).all()
        assert (back[f"{h}_predicted"] == predicted[h]).all()


def _demo_with_renamed_attribute(demo, out):
    """The demo CSV with its ``type`` attribute renamed ``Colour Group`` (as a VIA user might name it)."""
    text = demo.read_text("utf-8").replace('""type""', '""Colour Group""')
    assert '""Colour Group""' in text
    path = out / "renamed.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow
def test_train_script_with_a_head_name_holding_a_space(demo_small, tmp_path):
    via = _demo_with_renamed_attribute(demo_small, tmp_path)
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--annotations", str(via), "--images",
           str(demo_small.parent), "--heads", "name,Colour Group", "--epochs", "1", "--image-size", "32",
           "--set", "model.width=8", "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "evaluation" / "report.json").read_text("utf-8"))
    assert list(report["heads"]) == ["name", "Colour Group"]
    assert (tmp_path / "run" / "evaluation" / "confusion_colour_group.png").is_file()
