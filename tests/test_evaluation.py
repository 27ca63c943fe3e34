"""Evaluation metrics, baselines, bootstrap intervals, the "not learned" warning and the worst-crops sheet.

Expected values are computed by hand (scikit-learn is not a dependency); the definitions match
``f1_score(average="macro", labels=<classes in y_true or y_pred>, zero_division=0)`` and
``balanced_accuracy_score``.
"""

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO, write_image

C3 = ["a", "b", "c"]


# --- head_metrics against hand-computed values --------------------------------------------------

@pytest.mark.parametrize("case, y_true, y_pred, classes, expected", [
    # a: P 1, R 2/3, F1 0.8; b: P 1/2, R 1, F1 2/3; c absent from both: not averaged
    ("c absent from the test set", [0, 0, 0, 1], [0, 0, 1, 1], C3,
     dict(accuracy=3 / 4, balanced_accuracy=(2 / 3 + 1) / 2, macro_f1=(0.8 + 2 / 3) / 2)),
    # a: P 1, R 1/2, F1 2/3; b: F1 1; c predicted once, never true: F1 0 and averaged (as scikit-learn does)
    ("c predicted, never true", [0, 0, 1, 1], [0, 2, 1, 1], C3,
     dict(accuracy=3 / 4, balanced_accuracy=(1 / 2 + 1) / 2, macro_f1=(2 / 3 + 1 + 0) / 3)),
    # a: F1 1; b: P 1/3, R 1, F1 1/2; c true twice, never predicted: F1 0, recall 0
    ("c never predicted", [0, 1, 2, 2], [0, 1, 1, 1], C3,
     dict(accuracy=1 / 2, balanced_accuracy=(1 + 1 + 0) / 3, macro_f1=(1 + 1 / 2 + 0) / 3)),
    ("a single class, all right", [0, 0, 0], [0, 0, 0], ["a"],
     dict(accuracy=1.0, balanced_accuracy=1.0, macro_f1=1.0)),
    # a: P 1, R 3/4, F1 6/7; b predicted once, never true: F1 0
    ("a single true class, one wrong", [0, 0, 0, 0], [0, 0, 0, 1], ["a", "b"],
     dict(accuracy=3 / 4, balanced_accuracy=3 / 4, macro_f1=(6 / 7 + 0) / 2)),
    ("all wrong", [0, 1], [1, 0], ["a", "b"], dict(accuracy=0.0, balanced_accuracy=0.0, macro_f1=0.0)),
])
def test_head_metrics_match_hand_computed_values(case, y_true, y_pred, classes, expected):
    from cropclf.evaluation import head_metrics

    m = head_metrics(np.array(y_true), np.array(y_pred), classes)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), (case, key)


def test_head_metrics_per_class_and_confusion():
    from cropclf.evaluation import head_metrics

    m = head_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 1]), C3)
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 2, 0]]
    assert m["per_class"]["b"] == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


@pytest.mark.parametrize("y_true, classes, majority, fraction, chance", [
    ([0, 0, 0, 1], C3, "a", 3 / 4, 1 / 2),  # chance: 1 / classes present in the test labels (a, b)
    ([2, 1, 2, 2, 0], C3, "c", 3 / 5, 1 / 3),
    ([1, 1, 1], ["a", "b"], "b", 1.0, 1.0),
])
def test_baselines(y_true, classes, majority, fraction, chance):
    from cropclf.evaluation import head_metrics

    y_true = np.array(y_true)
    m = head_metrics(y_true, y_true, classes)
    assert m["majority_baseline"] == {"class": majority, "accuracy": pytest.approx(fraction)}
    assert m["chance_baseline"] == pytest.approx(chance)


# --- bootstrap over images ------------------------------------------------------------------------

def test_bootstrap_resamples_images_not_regions():
    """Two images, one all right, one all wrong: resampling images gives accuracy 0, 1/2 or 1.

    Resampling the 100 regions one by one would give a narrow interval around 0.5.
    """
    from cropclf.evaluation import bootstrap_intervals

    y_true = np.zeros(100, int)
    y_pred = np.r_[np.zeros(50, int), np.ones(50, int)]
    groups = np.r_[np.zeros(50, int), np.ones(50, int)]
    ci = bootstrap_intervals(y_true, y_pred, groups, 2, resamples=1000, seed=0)
    assert ci["accuracy"] == [0.0, 1.0]


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    from cropclf.evaluation import bootstrap_intervals, head_metrics

    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 600)
    y_pred = np.where(rng.random(600) < 0.7, y_true, rng.integers(0, 4, 600))
    groups = rng.integers(0, 120, 600)
    a = bootstrap_intervals(y_true, y_pred, groups, 4, resamples=500, seed=7)
    assert a == bootstrap_intervals(y_true, y_pred, groups, 4, resamples=500, seed=7)
    assert a != bootstrap_intervals(y_true, y_pred, groups, 4, resamples=500, seed=8)
    point = head_metrics(y_true, y_pred, list("abcd"))
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = a[key]
        assert lo < point[key] < hi, key
        assert hi - lo < 0.2, key  # 600 regions on 120 images: a few points wide


def test_bootstrap_of_one_image_is_the_point():
    from cropclf.evaluation import bootstrap_intervals

    ci = bootstrap_intervals(np.array([0, 1, 1]), np.array([0, 1, 0]), np.zeros(3, int), 2, resamples=50)
    assert ci["accuracy"] == [pytest.approx(2 / 3)] * 2


# --- the verdict: has a head learned anything? -----------------------------------------------------

def _scored(y_true, y_pred, classes, images, head="type"):
    from cropclf.evaluation import head_metrics

    groups = np.arange(len(y_true)) % images
    return head_metrics(np.array(y_true), np.array(y_pred), classes, groups=groups, head=head)


def test_a_constant_answer_is_flagged():
    y_true = [1] * 70 + [0] * 30  # 'minor' is the majority
    m = _scored(y_true, [1] * 100, ["major", "minor"], images=25)
    assert m["learned"] is False
    assert m["warning"].startswith("head 'type': accuracy 0.700 [")
    assert "is no better than always answering 'minor' (0.700)" in m["warning"]
    assert m["warning"].endswith("the model has not learned this head")


def test_noise_is_flagged_and_learning_is_not():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 300)
    noise = _scored(y_true, rng.integers(0, 3, 300), C3, images=60)
    assert noise["learned"] is False and "has not learned this head" in noise["warning"]
    good = _scored(y_true, np.where(rng.random(300) < 0.9, y_true, (y_true + 1) % 3), C3, images=60)
    assert good["learned"] is True and good["warning"] is None
    lo, hi = good["intervals"]["accuracy"]
    assert good["majority_baseline"]["accuracy"] < lo <= good["accuracy"] <= hi


def test_accurate_only_on_the_common_class_is_flagged_apart():
    """Imbalanced: the rare class always right, 10 of 90 common ones missed: balanced accuracy beats chance,
    accuracy (0.9) does not beat always answering the common class (0.9)."""
    y_true = ([0] * 9 + [1]) * 10
    y_pred = [1 if (k % 10 == 9 or k < 11) else 0 for k in range(100)]  # k = 0..8 and 10: common, missed
    m = _scored(y_true, y_pred, ["common", "rare"], images=20)
    assert m["accuracy"] == pytest.approx(0.9) and m["balanced_accuracy"] > 0.9
    assert m["learned"] is False
    assert "no better than always answering 'common' (0.900), though its balanced accuracy" in m["warning"]
    assert m["warning"].endswith("the model tells some classes apart but is not more accurate than a constant answer")


def test_balanced_accuracy_alone_can_fail():
    from cropclf.evaluation import verdict

    m = {"accuracy": 0.8, "balanced_accuracy": 0.6, "majority_baseline": {"class": "x", "accuracy": 0.5},
         "chance_baseline": 0.5, "intervals": {"accuracy": [0.6, 0.9], "balanced_accuracy": [0.45, 0.7]}}
    assert verdict("h", m) == ("head 'h': balanced accuracy 0.600 [0.450, 0.700] is no better than chance "
                               "(0.500: 1 of 2 classes), though its accuracy beats always answering 'x': the model "
                               "has not learned to tell this head's classes apart")
    m["intervals"]["balanced_accuracy"] = [0.51, 0.7]
    assert verdict("h", m) is None


def test_a_test_set_of_one_class_cannot_show_learning():
    m = _scored([1] * 20, [1] * 20, ["major", "minor"], images=5, head="type")
    assert m["learned"] is False
    assert m["warning"] == ("head 'type': every test region is 'minor', so a constant answer scores 1.000 too: "
                            "this test set cannot show whether the model learned this head")


def test_without_images_no_verdict():
    from cropclf.evaluation import head_metrics

    m = head_metrics(np.array([0, 1]), np.array([0, 1]), ["a", "b"])
    assert "intervals" not in m and "learned" not in m


# --- the worst-crops sheet ----------------------------------------------------------------------

def _ink(sheet, top):
    """Boolean masks of red ink and of dark grey ink below row ``top``."""
    s = sheet[top:].astype(int)
    red = (s[..., 0] - s[..., 1] > 80) & (s[..., 0] - s[..., 2] > 80)
    grey = (s.max(-1) < 160) & (s.max(-1) - s.min(-1) < 30)
    return red, grey


def test_contact_sheet_colours_mistakes_and_keeps_the_caption_whole(tmp_path):
    from cropclf.plots import contact_sheet

    crop = np.full((20, 30, 3), 255, np.uint8)  # white: any ink below it is caption text
    right, wrong = "name: circle", "type: dark_blue_with_stripes -> light_green!"
    contact_sheet([crop], [[right, wrong]], tmp_path / "s.png", highlight=[[False, True]], title="t")
    sheet = cv2.imread(str(tmp_path / "s.png"))[..., ::-1]
    red, grey = _ink(sheet, 24)
    assert red.any(), "the wrong head's caption is not coloured"
    rows_red, cols_red = np.nonzero(red)
    rows_grey, cols_grey = np.nonzero(grey)
    assert rows_grey.max() < rows_red.min()  # the right line in black above the wrong line in red
    width = cv2.getTextSize(wrong, cv2.FONT_HERSHEY_SIMPLEX, 0.38, 1)[0][0]
    assert abs((cols_red.max() - cols_red.min()) - width) <= 3, "the caption was cut"
    assert cols_red.max() < sheet.shape[1]


def test_contact_sheet_wraps_a_caption_wider_than_its_cell(tmp_path):
    from cropclf.plots import _wrap

    text = "name: " + "x" * 200 + "!"
    lines = _wrap(text, 300)
    assert "".join(lines) == text and len(lines) > 1
    assert all(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, 0.38, 1)[0][0] <= 300 for s in lines)


def test_worst_sheet_marks_the_wrong_head(tmp_path):
    from cropclf import evaluation
    from cropclf.data.labels import LabelMap

    class Seq:  # the two things _worst_sheet reads from a CropSequence
        labels = {"name": np.array([0, 1]), "type": np.array([0, 0])}

        def crops(self, order):
            return np.full((len(order), 16, 24, 3), 255, np.float32)

    drawn = {}
    maps = {"name": LabelMap("name", ["circle", "square"]), "type": LabelMap("type", ["red", "blue"])}
    probs = {"name": np.array([[0.9, 0.1], [0.8, 0.2]]), "type": np.array([[0.6, 0.4], [0.7, 0.3]])}
    evaluation.contact_sheet, real = (lambda crops, captions, path, **kw: drawn.update(captions=captions, **kw)), \
        evaluation.contact_sheet
    try:
        evaluation._worst_sheet(Seq(), maps, probs, np.array([0.1, 0.8]), np.array([False, True]), tmp_path / "w.png")
    finally:
        evaluation.contact_sheet = real
    assert drawn["captions"] == [["name: square -> circle!", "type: red"]]
    assert drawn["highlight"] == [[True, False]]


# --- training tells the user when validation loss stops improving ------------------------------------

def test_stall_notice_names_the_best_epoch():
    from cropclf.training import StallNotice

    lines = []
    cb = StallNotice("val_loss", log=lines.append)
    cb.on_train_begin()
    for epoch, loss in enumerate([0.9, 0.7, 0.8, 0.75, 0.6, 0.65]):
        cb.on_epoch_end(epoch, {"val_loss": loss, "loss": 1.0})
    assert lines == ["Epoch 3: val_loss 0.8000 has not improved since epoch 2 (best 0.7000)",
                     "Epoch 4: val_loss 0.7500 has not improved since epoch 2 (best 0.7000)",
                     "Epoch 6: val_loss 0.6500 has not improved since epoch 5 (best 0.6000)"]


def test_stall_notice_continues_a_resumed_history():
    from cropclf.training import StallNotice

    lines = []
    cb = StallNotice("val_loss", history={"val_loss": [0.5, 0.6, 0.7]}, log=lines.append)
    cb.on_train_begin()
    cb.on_epoch_end(3, {"val_loss": 0.55})
    assert lines == ["Epoch 4: val_loss 0.5500 has not improved since epoch 1 (best 0.5000)"]


def test_evaluate_refuses_zero_resamples(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--run", tmp_path,
                           "--resamples", "0"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: --resamples must be at least 1. Received: 0"


# --- end to end: a learnable head and a noise head ----------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 230)}


def _two_heads_dataset(root, n_images=60, per_image=5, seed=0):
    """Boxes of a solid colour (learnable) carrying a random 'noise' label unrelated to the pixels."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        h, w = 72, 120
        img = rng.integers(90, 160, (h, w, 3)).astype(np.uint8)  # grey-ish noise background
        name = f"img{i:03d}.png"
        for r in range(per_image):
            colour = rng.choice(list(COLOURS))
            x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            bw, bh = int(rng.integers(12, 20)), int(rng.integers(12, 20))
            img[y:y + bh, x:x + bw] = COLOURS[colour]
            rows.append([name, 0, "{}", per_image, r,
                         json.dumps({"name": "rect", "x": x, "y": y, "width": bw, "height": bh}),
                         json.dumps({"colour": colour, "noise": str(rng.choice(["p", "q"]))})])
        write_image(root / name, img)
    path = root / "via.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "file_size", "file_attributes", "region_count", "region_id",
                    "region_shape_attributes", "region_attributes"])
        w.writerows(rows)
    return path


@pytest.mark.slow
def test_evaluate_warns_about_the_noise_head_only(tmp_path):
    """A tiny run scored through scripts/evaluate.py: the noise head is flagged, the colour head not."""
    from cropclf.config import Config
    from cropclf.training import train

    via = _two_heads_dataset(tmp_path / "data")
    cfg = Config().replace(**{"data.annotations": str(via), "data.heads": ["colour", "noise"],
                              "crop.image_size": [24, 24], "model.width": 8, "train.epochs": 3,
                              "train.batch_size": 16, "train.learning_rate": 0.01, "augment.enabled": False})
    lines = []
    run = train(cfg, tmp_path / "run", export=False, log=lines.append)
    val = json.loads((run / "history.json").read_text())["val_loss"]
    stalled = [e + 1 for e in range(1, len(val)) if val[e] >= min(val[:e])]
    assert [int(line.split(":")[0].split()[-1]) for line in lines if "has not improved" in line] == stalled
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CROPCLF_QUIET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--run", run],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    report = json.loads((run / "evaluation" / "report.json").read_text())
    noise, colour = report["heads"]["noise"], report["heads"]["colour"]
    assert noise["learned"] is False and colour["learned"] is True, out
    assert colour["warning"] is None
    assert "is no better than always answering" in noise["warning"]
    assert "has not learned this head" in noise["warning"]
    for text in (out, (run / "evaluation" / "report.txt").read_text()):
        assert f"WARNING: {noise['warning']}" in text
        assert "WARNING: head 'colour'" not in text
        assert "majority" in text and "chance" in text and "[" in text
    assert report["bootstrap"]["unit"] == "image" and report["bootstrap"]["resamples"] == 1000
    sheet = cv2.imread(str(run / "evaluation" / "worst.png"))[..., ::-1]
    assert _ink(sheet, 24)[0].any(), "no mistake coloured on the worst-crops sheet"
