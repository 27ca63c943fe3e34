"""Starting from another run's trunk, the two fine-tuning stages, resuming across them, and serving."""

import keras
import numpy as np
import pytest

from conftest import small_config
from cropclf.config import Config, ModelConfig
from cropclf.errors import ConfigError
from cropclf.model import apply_stage, build_model, stage, trunk_layers

QUIET = dict(log=lambda *a: None)


def _snapshot(layers):
    return [[v.numpy().copy() for v in layer.weights] for layer in layers]


def _changed(before, layers):
    return [any(not np.array_equal(a, v.numpy()) for a, v in zip(b, layer.weights)) for b, layer in zip(before, layers)]


def _fit_once(model, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 2, (32, 32, 32, 3)) * 255).astype(np.float32)
    y = {k: np.eye(3, dtype=np.float32)[rng.integers(0, 3, 32)] for k in model.output}
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)


@pytest.mark.parametrize("backbone, kwargs", [("small", {"width": 8}), ("MobileNetV3Small", {"alpha": 0.75})])
def test_each_stage_freezes_what_it_says(tmp_path, backbone, kwargs):
    source = build_model(ModelConfig(backbone=backbone, **kwargs), (32, 32), {"a": 3}, seed=1)
    source.get_layer("trunk").save_weights(tmp_path / "t.weights.h5")
    cfg = Config().replace(**{"model.backbone": backbone, "model.weights": str(tmp_path / "t.weights.h5"),
                              "train.unfreeze": 0.5, "train.freeze_epochs": 1,
                              **{f"model.{k}": v for k, v in kwargs.items()}})
    model = build_model(cfg.model, (32, 32), {"a": 3}, seed=2)
    layers = trunk_layers(model)
    is_bn = [isinstance(layer, keras.layers.BatchNormalization) for layer in layers]
    assert any(is_bn)

    assert [stage(cfg, e) for e in range(3)] == ["frozen", "finetune", "finetune"]
    apply_stage(model, cfg, "frozen")
    before, head = _snapshot(layers), model.get_layer("a").kernel.numpy().copy()
    _fit_once(model)
    assert not any(_changed(before, layers))  # every trunk weight, BatchNorm statistics included
    assert not np.array_equal(head, model.get_layer("a").kernel.numpy())  # the head learned

    apply_stage(model, cfg, "finetune")
    assert float(model.optimizer.learning_rate) == pytest.approx(cfg.train.learning_rate * cfg.train.finetune_lr_factor)
    before = _snapshot(layers)
    _fit_once(model, seed=1)
    changed = _changed(before, layers)
    top = len(layers) - int(np.ceil(0.5 * len(layers)))
    assert not any(changed[:top])  # the bottom half stays as it was
    assert not any(c for c, bn in zip(changed, is_bn) if bn)  # BatchNorm: inference mode, scale and statistics kept
    learning = [bool(layer.trainable_weights) for layer in layers]
    assert learning == [k >= top and not bn for k, bn in enumerate(is_bn)]  # the rest of the top half learns
    assert sum(changed) > 0.8 * sum(learning)  # (a random "pretrained" trunk passes some gradients on as zeros)


def test_scratch_training_has_one_stage_that_trains_batchnorm():
    cfg = Config().replace(**{"model.width": 8})
    assert {stage(cfg, e) for e in range(10)} == {"scratch"}
    model = apply_stage(build_model(cfg.model, (32, 32), {"a": 3}), cfg, "scratch")
    layers = trunk_layers(model)
    before = _snapshot(layers)
    _fit_once(model)
    assert all(_changed(before, layers))  # BatchNorm statistics included


@pytest.fixture(scope="module")
def source_run(demo_small, tmp_path_factory):
    from cropclf.training import train

    run = tmp_path_factory.mktemp("source") / "run"
    train(small_config(demo_small, **{"train.epochs": 1, "model.width": 8, "train.workers": 1}), run,
          export=False, **QUIET)
    return run


def _trunk_weights(path):
    return keras.models.load_model(path).get_layer("trunk").get_weights()


def _relabelled(csv, tmp_path):
    """The same images with other labels: ``name`` becomes ``shape_kind`` with two classes, not five."""
    import pandas as pd

    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame["region_attributes"] = frame["region_attributes"].str.replace(
        r'"name":"(\w+)"', lambda m: '"shape_kind":"' + ("round" if m[1] == "circle" else "corner") + '"', regex=True)
    assert set(frame["region_attributes"].str.extract(r'"shape_kind":"(\w+)"')[0]) == {"round", "corner"}
    out = tmp_path / csv.name
    frame.to_csv(out, index=False)
    (tmp_path / "images").symlink_to(csv.parent / "images")
    return out


@pytest.mark.slow
def test_a_run_from_another_run_keeps_its_trunk_and_gets_new_heads(source_run, demo_small, tmp_path):
    from cropclf.training import train

    annotations = _relabelled(demo_small, tmp_path)
    cfg = small_config(annotations, **{"train.epochs": 1, "model.width": 8, "train.workers": 1,
                                       "data.heads": ["shape_kind", "type"], "model.weights": str(source_run),
                                       "train.seed": 5})
    # at step 0: the source's trunk, heads as fresh as a new model's, sized for the new labels
    model = build_model(cfg.model, (32, 32), {"shape_kind": 2, "type": 4}, seed=5)
    for a, b in zip(model.get_layer("trunk").get_weights(), _trunk_weights(source_run / "model.keras")):
        np.testing.assert_array_equal(a, b)
    fresh = build_model(ModelConfig(width=8), (32, 32), {"shape_kind": 2, "type": 4}, seed=5)
    for head in ("shape_kind", "type"):
        np.testing.assert_array_equal(model.get_layer(head).kernel.numpy(), fresh.get_layer(head).kernel.numpy())
    assert model.output["shape_kind"].shape[-1] == 2

    run = train(cfg, tmp_path / "run", export=False, **QUIET)  # one frozen epoch: the trunk stays the source's
    assert keras.models.load_model(run / "model.keras").output["shape_kind"].shape[-1] == 2
    for a, b in zip(_trunk_weights(run / "model.keras"), _trunk_weights(source_run / "model.keras")):
        np.testing.assert_array_equal(a, b)


def test_another_runs_trunk_must_match(source_run, demo_small):
    cfg = small_config(demo_small, **{"model.width": 16, "model.weights": str(source_run)})
    with pytest.raises(ConfigError, match=r"that run's trunk is small \(width 8\), this run's is small \(width 16\)"):
        build_model(cfg.model, (32, 32), {"type": 4})
    cfg = cfg.replace(**{"model.backbone": "MobileNetV3Small", "model.width": 8})
    with pytest.raises(ConfigError, match=r"small \(width 8\), this run's is MobileNetV3Small.*--backbone small"):
        build_model(cfg.model, (32, 32), {"type": 4})


@pytest.mark.slow
def test_resume_across_the_stage_boundary_equals_an_uninterrupted_run(source_run, demo_small, tmp_path):
    from cropclf.training import train

    def config(epochs):
        return small_config(demo_small, **{"train.epochs": epochs, "model.width": 8, "train.workers": 1,
                                           "model.weights": str(source_run), "train.freeze_epochs": 1,
                                           "train.unfreeze": 0.5, "train.schedule": "plateau"})

    whole = train(config(3), tmp_path / "whole", export=False, **QUIET)
    for epochs in (1, 2, 3):  # stops after the frozen epoch, then inside the fine-tuning stage
        parts = train(config(epochs), tmp_path / "parts", export=False, **QUIET)
    from cropclf.training import committed_state

    a, b = committed_state(whole), committed_state(parts)
    assert a["history"] == b["history"]
    wa = keras.models.load_model(whole / "checkpoints" / a["checkpoint"]).get_weights()
    wb = keras.models.load_model(parts / "checkpoints" / b["checkpoint"]).get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)
    lr = a["history"]["learning_rate"]
    assert lr[0] == pytest.approx(0.003) and lr[1] == pytest.approx(0.0003)


@pytest.mark.slow
def test_export_parity_with_a_pretrained_keras_applications_trunk(demo_small, tmp_path):
    from cropclf.evaluation import evaluate_run
    from cropclf.model import trunk
    from cropclf.training import train

    weights = tmp_path / "trunk.weights.h5"
    trunk(ModelConfig(backbone="ResNet50"), (32, 32), seed=3).save_weights(weights)  # caffe: BGR and mean in-graph
    cfg = small_config(demo_small, **{"train.epochs": 1, "model.backbone": "ResNet50", "model.weights": str(weights),
                                      "train.workers": 1})
    run = train(cfg, tmp_path / "run", **QUIET)
    report = evaluate_run(run, **QUIET)
    for head, agreement in report["serving_agreement"].items():
        assert agreement["same_label"] >= 0.99, (head, agreement)
        assert agreement["max_probability_difference"] < 0.02, (head, agreement)
