"""Class weighting: ``n / (k * n_c)`` per head over the training split, and Keras applying it per head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import small_config, write_image
from fixtures_via import VIA_HEADER, csv_row, write

from cropclf.via import read_annotations
from cropclf.config import CropConfig, ModelConfig
from cropclf.data.labels import build_label_maps

pytestmark = pytest.mark.slow


def imbalanced_dataset(folder):
    """12 sharp-noise images (64x48), 5 regions each; `name` and `type` skewed differently."""
    rng = np.random.default_rng(0)
    lines = [VIA_HEADER]
    for i in range(12):
        write_image(folder / f"img{i}.png", (rng.integers(0, 2, (48, 64, 3)) * 255).astype(np.uint8))
        names = ["common", "common", "common", "mid", "rare" if i % 2 else "common"]
        for k, name in enumerate(names):
            shape = {"name": "rect", "x": 2 + 12 * k, "y": 4 + k, "width": 10, "height": 30}
            kind = "y" if k == i % 5 else "x"
            lines.append(csv_row(f"img{i}.png", {}, 5, k, shape, {"name": name, "type": kind}))
    return write(folder, "via.csv", "\n".join(lines))


def train_recording_weights(annotations, run_dir, monkeypatch) -> dict:
    """Trains one epoch through `cropclf.training.train`; returns the training sequence's weights."""
    from cropclf import training
    from cropclf.data.sequence import CropSequence

    seen = {}

    class Recording(CropSequence):
        def __init__(self, frame, label_maps, *args, class_weights=None, **kw):
            super().__init__(frame, label_maps, *args, class_weights=class_weights, **kw)
            if class_weights is not None:  # the training sequence; validation has none
                seen.update(maps=label_maps, weights=class_weights, seq=self)

    monkeypatch.setattr(training, "CropSequence", Recording)
    cfg = small_config(annotations, **{"train.epochs": 1, "model.width": 4, "train.workers": 1})
    seen["run"] = training.train(cfg, run_dir, export=False, log=lambda *a: None)
    return seen


def test_balanced_weights_are_n_over_k_n_c_on_the_training_split(tmp_path, monkeypatch):
    annotations = imbalanced_dataset(tmp_path)
    seen = train_recording_weights(annotations, tmp_path / "run", monkeypatch)
    run = seen["run"]
    split = pd.read_csv(run / "split.csv")
    frame = read_annotations(annotations)
    train = frame[frame["path"].isin(split.loc[split["split"] == "train", "path"])]
    assert 0 < train["filename"].nunique() < 12
    for head, label_map in seen["maps"].items():
        counts = train[head].value_counts()
        n, k = counts.sum(), len(counts)
        expected = np.array([n / (k * counts[c]) for c in label_map.classes])
        assert len(set(np.round(expected, 6))) > 1  # the training split is imbalanced for this head
        np.testing.assert_allclose(seen["weights"][head], expected, rtol=1e-6)
        # The batches carry them: each region's sample weight is its class's weight.
        for i in range(len(seen["seq"])):
            _, y, w = seen["seq"][i]
            np.testing.assert_allclose(w[head], expected[y[head].argmax(axis=1)], rtol=1e-6)


def weighted_cross_entropy(y, p, w):
    """What Keras' CategoricalCrossentropy with sample weights reports: sum(w * ce) / batch size."""
    p = np.clip(p / p.sum(axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    ce = -(y * np.log(p)).sum(axis=1)
    return float((w * ce).sum() / len(y))


def test_keras_applies_each_heads_weights_to_that_heads_loss(tiny_images):
    """Through ``model.fit``: each head's reported loss is its own weighted cross-entropy."""
    from cropclf.model import build_model, compile_model
    from cropclf.data.sequence import CropSequence

    maps = build_label_maps(tiny_images, ["name", "type"])
    # Weights far from 1 and different per head: ignoring them, or swapping heads, shows.
    weights = {"name": np.linspace(0.1, 4.0, len(maps["name"])).astype(np.float32),
               "type": np.array([0.2, 5.0], np.float32)}
    crop = CropConfig(image_size=(24, 40), margin=0.1)
    seq = CropSequence(tiny_images, maps, batch_size=64, crop=crop, class_weights=weights, progress=False)
    assert len(seq) == 1  # one batch: the reported loss is that batch's loss
    X, y, w = seq[0]
    for head in ("name", "type"):
        np.testing.assert_array_equal(w[head], weights[head][y[head].argmax(axis=1)])

    # dropout 0 and learning rate 0: the forward pass fit makes is model(X, training=True)
    model = compile_model(build_model(ModelConfig(width=4, dropout=0.0), (24, 40),
                                      {h: len(m) for h, m in maps.items()}), 0.0)
    probs = {h: np.asarray(p) for h, p in model(X, training=True).items()}
    history = model.fit(seq, epochs=1, shuffle=False, verbose=0).history

    expected = {h: weighted_cross_entropy(y[h], probs[h], w[h]) for h in ("name", "type")}
    unweighted = {h: weighted_cross_entropy(y[h], probs[h], np.ones(len(X))) for h in ("name", "type")}
    for head in ("name", "type"):
        assert history[f"{head}_loss"][0] == pytest.approx(expected[head], rel=1e-4)
        assert abs(expected[head] - unweighted[head]) > 0.05 * unweighted[head]  # the weights matter
    assert history["loss"][0] == pytest.approx(expected["name"] + expected["type"], rel=1e-4)


def test_weights_count_only_the_regions_trained_on(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    lines = [VIA_HEADER]
    for i in range(12):
        write_image(tmp_path / f"img{i}.png", (rng.integers(0, 2, (48, 64, 3)) * 255).astype(np.uint8))
        regions = [({"name": "rect", "x": 2 + 12 * k, "y": 4, "width": 10, "height": 30},
                    {"name": "aab"[k % 3], "type": "y" if k == 0 else "x"}) for k in range(5)]
        regions += [({"name": "point", "cx": 5, "cy": 5}, {"name": "b", "type": "y"}),  # cannot be cropped
                    ({"name": "rect", "x": 3, "y": 3, "width": 10, "height": 10}, {"name": "b", "type": ""})]
        lines += [csv_row(f"img{i}.png", {}, len(regions), k, s, a) for k, (s, a) in enumerate(regions)]
    seen = train_recording_weights(write(tmp_path, "via.csv", "\n".join(lines)), tmp_path / "run", monkeypatch)
    for head, label_map in seen["maps"].items():
        counts = np.bincount(seen["seq"].labels[head], minlength=len(label_map))  # what is trained on
        np.testing.assert_allclose(seen["weights"][head], counts.sum() / (len(counts) * counts), rtol=1e-6)
