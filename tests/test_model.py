import keras
import numpy as np
import pytest

from cropclf.config import ModelConfig
from cropclf.errors import ConfigError
from cropclf.model import build_model, compile_model


def test_outputs_are_named_after_heads():
    model = build_model(ModelConfig(width=8), (24, 40), {"name": 5, "type": 4})
    out = model(np.zeros((2, 24, 40, 3), np.float32))
    assert set(out) == {"name", "type"}
    assert out["name"].shape == (2, 5) and out["type"].shape == (2, 4)
    np.testing.assert_allclose(np.sum(out["name"], axis=1), 1, rtol=1e-5)


def test_heads_that_sanitise_alike_get_distinct_outputs():
    # The naming rule itself is tested in test_head_names.py.
    model = build_model(ModelConfig(width=8), (32, 32), {"a b": 2, "a_b": 3})
    assert {k: v.shape[-1] for k, v in model.output.items()} == {"a_b": 2, "head_2": 3}


def test_each_heads_metric_belongs_to_that_head():
    # Same class count on both heads, so a metric routed to the wrong head would not crash.
    model = compile_model(build_model(ModelConfig(width=8), (32, 32), {"name": 3, "type": 3}), 1e-3)
    x = np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype(np.float32)
    pred = model.predict(x, verbose=0)
    eye = np.eye(3, dtype=np.float32)
    y = {"name": eye[(pred["name"].argmax(1) + 1) % 3],  # always wrong
         "type": eye[pred["type"].argmax(1)]}  # always right
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["name_accuracy"] == pytest.approx(0.0)
    assert logs["type_accuracy"] == pytest.approx(1.0)


def test_pixel_scaling_is_inside_the_model():
    model = build_model(ModelConfig(width=8), (32, 32), {"name": 2})
    assert model.get_layer("trunk").get_layer("scale_pixels").scale == pytest.approx(1 / 255)


@pytest.mark.slow
def test_applications_backbone_by_name():
    model = build_model(ModelConfig(backbone="MobileNetV3Small"), (64, 64), {"name": 3, "type": 2})
    out = model(np.zeros((1, 64, 64, 3), np.float32))
    assert out["type"].shape == (1, 2)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="Received: 'NoSuchNet'"):
        build_model(ModelConfig(backbone="NoSuchNet"), (64, 64), {"name": 3})


def test_save_load_round_trip(tmp_path):
    model = build_model(ModelConfig(width=8), (32, 32), {"name": 2, "type": 3})
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    x = np.ones((1, 32, 32, 3), np.float32) * 100
    np.testing.assert_allclose(model(x)["type"], again(x)["type"], atol=1e-6)


@pytest.mark.parametrize("stage_name", ["scratch", "frozen", "finetune"])
@pytest.mark.parametrize("decay, smoothing", [(0.0, 0.0), (0.05, 0.2)])
def test_every_stage_compiles_the_configured_optimizer_and_loss(stage_name, decay, smoothing):
    from cropclf.config import Config
    from cropclf.model import apply_stage

    cfg = Config().replace(**{"model.width": 4, "train.weight_decay": decay, "train.label_smoothing": smoothing})
    model = apply_stage(build_model(cfg.model, (24, 40), {"name": 3}), cfg, stage_name)
    assert type(model.optimizer) is (keras.optimizers.AdamW if decay else keras.optimizers.Adam)
    if decay:
        assert model.optimizer.weight_decay == pytest.approx(decay)
    # the loss fit minimises is cross-entropy against targets moved `smoothing` of the way to uniform
    x = np.random.default_rng(0).uniform(0, 255, (8, 24, 40, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(8) % 3]
    p = model.predict(x, verbose=0)["name"]
    target = y * (1 - smoothing) + smoothing / 3
    expected = float(np.mean(-np.sum(target * np.log(p), axis=1)))
    assert model.evaluate(x, {"name": y}, verbose=0, return_dict=True)["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("key, value", [("weight_decay", -0.1), ("weight_decay", 1.5), ("label_smoothing", 1.0),
                                        ("label_smoothing", "0.1"), ("label_smoothing", True)])
def test_bad_recipe_values_are_refused(key, value):
    from cropclf.config import Config

    with pytest.raises(ConfigError, match=rf"train\.{key}.*Received: {value!r}"):
        Config().replace(**{f"train.{key}": value})
