"""keras.applications trunks: their own preprocessing inside the model, weights from files and from
Keras's cache (offline), and what each fine-tuning stage lets learn."""

import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from conftest import REPO
from cropclf.config import ModelConfig
from cropclf.errors import ConfigError
from cropclf.model import build_model, trunk

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CROPCLF_QUIET": "1",
       # offline, whatever the machine: urllib sends every download to a closed port
       "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
       "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}


def sharp_pixels(shape, seed=0):
    """Black/white noise with a few grey levels: any channel swap or offset error shows."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 6, shape) * 51).astype(np.float32)


def application(shared: keras.Model) -> keras.Model:
    return next(layer for layer in shared.layers if isinstance(layer, keras.Model))


def write_legacy_h5(model: keras.Model, path) -> None:
    """The layout of Keras's own ImageNet files (legacy HDF5 weights, by layer order)."""
    from keras.src.legacy.saving import legacy_h5_format

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.parametrize("backbone, family, kwargs", [
    ("ResNet50", "resnet", {}),  # caffe: RGB -> BGR, minus the ImageNet mean
    ("DenseNet121", "densenet", {}),  # torch: [0, 1], then mean and standard deviation per channel
    ("MobileNetV2", "mobilenet_v2", {"alpha": 0.35}),  # tf: [-1, 1]
    ("MobileNetV3Small", "mobilenet_v3", {"alpha": 0.75}),  # rescales itself
])
def test_trunk_applies_its_familys_preprocess_input(backbone, family, kwargs):
    shared = trunk(ModelConfig(backbone=backbone, **kwargs), (32, 40), seed=0)
    x = sharp_pixels((2, 32, 40, 3))
    preprocess = getattr(keras.applications, family).preprocess_input
    expected = application(shared)(preprocess(x.copy()))
    np.testing.assert_allclose(shared(x), expected, rtol=1e-5, atol=1e-5)


def test_every_keras_application_has_known_preprocessing():
    # a family Keras adds later must be looked at, not given another family's scaling by default
    from cropclf.model import _PREPROCESSING, family

    names = [n for n in dir(keras.applications) if n[:1].isupper()]
    assert {family(n) for n in names} <= set(_PREPROCESSING), sorted({family(n) for n in names} - set(_PREPROCESSING))


@pytest.mark.parametrize("kind", ["trunk.weights.h5", "application.weights.h5", "application.h5"])
def test_a_weights_file_makes_the_trunk_the_source_exactly(tmp_path, kind):
    cfg = ModelConfig(backbone="MobileNetV3Small", alpha=0.75)
    source = build_model(cfg, (32, 32), {"name": 3}, seed=1)
    shared = source.get_layer("trunk")
    path = tmp_path / kind
    if kind == "trunk.weights.h5":
        shared.save_weights(path)
    elif kind == "application.weights.h5":
        application(shared).save_weights(path)
    else:
        write_legacy_h5(application(shared), path)
    x = sharp_pixels((3, 32, 32, 3), seed=4)
    loaded = build_model(ModelConfig(backbone="MobileNetV3Small", alpha=0.75, weights=str(path)), (32, 32),
                         {"name": 3}, seed=2)
    control = build_model(cfg, (32, 32), {"name": 3}, seed=2)
    differ = [not np.array_equal(a, b) for a, b in zip(control.get_layer("trunk").get_weights(), shared.get_weights())]
    assert any(differ)  # the seeds alone would not give the source's trunk
    np.testing.assert_array_equal(loaded.get_layer("trunk")(x), shared(x))
    loaded.get_layer("name").set_weights(source.get_layer("name").get_weights())
    np.testing.assert_array_equal(loaded(x)["name"], source(x)["name"])


def test_a_weights_file_of_another_trunk_is_refused(tmp_path):
    shared = trunk(ModelConfig(backbone="MobileNetV3Small", alpha=0.75), (32, 32))
    application(shared).save_weights(tmp_path / "small.weights.h5")
    with pytest.raises(ConfigError, match=r"does not fit a MobileNetV3Large \(alpha 0.75\) trunk"):
        build_model(ModelConfig(backbone="MobileNetV3Large", alpha=0.75, weights=str(tmp_path / "small.weights.h5")),
                    (32, 32), {"name": 3})


@pytest.mark.parametrize("weights, message", [
    ("nowhere.weights.h5", "is neither a weights file nor a run directory"),
    ("notes.txt", "expected a .weights.h5 or .h5 weights file"),
])
def test_bad_weights_paths(tmp_path, weights, message):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(backbone="MobileNetV3Small", weights=str(tmp_path / weights)), (32, 32), {"a": 2})


def _train_script(tmp_path, annotations, *args):
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--annotations", str(annotations), "--out",
           str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16", "--no-evaluate", *map(str, args)]
    env = {**ENV, "KERAS_HOME": str(tmp_path / "keras_home")}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _one_error_line(done) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr[-3000:]
    return errors[0]


V3_SMALL_FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"  # keras/src/applications/mobilenet_v3.py


@pytest.mark.slow
def test_imagenet_offline_names_the_file_and_where_to_put_it(demo_small, tmp_path):
    done = _train_script(tmp_path, demo_small, "--backbone", "MobileNetV3Small", "--weights", "imagenet")
    line = _one_error_line(done)
    place = tmp_path / "keras_home" / "models" / V3_SMALL_FILE
    assert f"place it at {place}" in line
    assert f"Download https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/{V3_SMALL_FILE}" in line
    assert "did not match" not in line and "Received: URL fetch failure" in line
    assert not (tmp_path / "run").exists()  # refused before any data work


@pytest.mark.slow
def test_imagenet_file_failing_keras_hash_check_is_said(demo_small, tmp_path):
    # MobileNetV3's files carry a hash in Keras: a stand-in fails it, Keras tries to download, then deletes it
    shared = trunk(ModelConfig(backbone="MobileNetV3Small"), (32, 32))
    write_legacy_h5(application(shared), tmp_path / "keras_home" / "models" / V3_SMALL_FILE)
    line = _one_error_line(_train_script(tmp_path, demo_small, "--backbone", "MobileNetV3Small",
                                         "--weights", "imagenet"))
    assert "did not match Keras's hash for it" in line and f"models/{V3_SMALL_FILE}" in line


@pytest.mark.slow
def test_imagenet_weights_from_the_keras_cache_are_what_training_starts_from(demo_small, tmp_path):
    # MobileNetV2's files carry no hash in Keras, so a file of the right name is used as it is
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"  # below 96 px: the 224 file
    source = application(trunk(ModelConfig(backbone="MobileNetV2", alpha=0.35), (32, 32), seed=7))
    write_legacy_h5(source, tmp_path / "keras_home" / "models" / name)
    done = _train_script(tmp_path, demo_small, "--backbone", "MobileNetV2", "--set", "model.alpha=0.35",
                         "--weights", "imagenet", "--image-size", "32", "--set", "train.freeze_epochs=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Trunk: MobileNetV2 with ImageNet weights" in done.stdout
    trained = keras.models.load_model(tmp_path / "run" / "model.keras").get_layer("trunk")
    got, want = application(trained).get_weights(), source.get_weights()
    assert len(got) == len(want)
    for a, b in zip(got, want):  # one frozen epoch: kernels and BatchNorm statistics untouched
        np.testing.assert_array_equal(a, b)


def test_input_size_defaults_per_trunk(tmp_path):
    import argparse

    from cropclf.cli import add_train_args, config_from_args

    p = argparse.ArgumentParser()
    add_train_args(p)
    p.add_argument("--out")
    size = lambda *a: tuple(config_from_args(p.parse_args(list(a))).crop.image_size)  # noqa: E731
    assert size() == (64, 64)
    assert size("--backbone", "ResNet50") == (96, 96)
    assert size("--backbone", "NASNetMobile", "--weights", "imagenet") == (224, 224)
    assert size("--backbone", "ResNet50", "--image-size", "48") == (48, 48)
    assert size("--backbone", "ResNet50", "--set", "crop.image_size=[40, 50]") == (40, 50)
    (tmp_path / "c.json").write_text('{"crop": {"image_size": [72, 72]}}')
    assert size("--backbone", "ResNet50", "--config", str(tmp_path / "c.json")) == (72, 72)
