"""Bad flags end in one ``error:`` line and exit 2, never a traceback; most before TensorFlow starts."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CROPCLF_QUIET": "1"}


def _run(script, tmp_path, *args, timeout=300):
    cmd = [sys.executable, str(REPO / "scripts" / script), *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _one_error_line(done, message):
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == errors[0]  # after TensorFlow's own start-up noise


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "`train.epochs` and `train.batch_size` must be >= 1. Received: 0, 64"),
    (["--epochs", "-3"], "Received: -3, 64"),
    (["--batch-size", "0"], "must be >= 1. Received: 30, 0"),
    (["--workers", "0"], "`train.workers` must be >= 1. Received: 0"),
    (["--image-size", "0"], "`crop.image_size` must be (height, width) in [8, 1024]. Received: (0, 0)"),
    (["--image-size", "64x0"], "Received: (64, 0)"),
    (["--image-size=-64"], "Received: (-64, -64)"),
    (["--seed", "-1"], "`train.seed` must be in [0, 2**32 - 1]"),
    (["--seed", str(2**32)], f"Received: {2**32}"),
    (["--set", "train.epochs=2.5"], "`train.epochs` must be an integer. Received: 2.5"),
    (["--set", "train.seed=true"], "`train.seed` must be an integer. Received: True"),
    (["--set", "train.learning_rate=0"], "`train.learning_rate` must be a number > 0"),
    (["--set", "data.heads=[\"name\", \" \"]"], "`data.heads` must be non-blank attribute names"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_numeric_flags_fail_before_tensorflow(tmp_path, args, message):
    done = _run("train.py", tmp_path, *args, "--out", tmp_path / "run", timeout=60)
    _one_error_line(done, message)
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # nothing was done


def test_inspect_refuses_a_negative_seed(tmp_path):
    _one_error_line(_run("inspect_data.py", tmp_path, "--seed", "-1", timeout=60), "`train.seed` must be in")


def test_benchmark_refuses_no_images(tmp_path):
    done = _run("benchmark.py", tmp_path, "--images", "0", "--data-dir", tmp_path / "d")
    _one_error_line(done, "`n_images` must be >= 1. Received: n_images=0")


@pytest.mark.parametrize("args, message", [
    (["--backbone", "NoSuchNet"], "`model.backbone` must be 'small' or a keras.applications model"),
    (["--backbone", "resnet"], "Received: 'resnet'"),  # a module of keras.applications, not a model
    (["--backbone", "InceptionV3", "--image-size", "64"],
     "Backbone InceptionV3 needs input crops of at least 75x75 px; crop.image_size is 64x64."),
    (["--backbone", "Xception", "--image-size", "96x48"], "at least 71x71 px; crop.image_size is 96x48."),
    (["--image-size", "14x64"], "Backbone small needs input crops of at least 15x15 px; crop.image_size is 14x64."),
], ids=["unknown", "module", "InceptionV3-64", "Xception-96x48", "small-14"])
def test_bad_backbone_before_any_data_work(demo_small, tmp_path, args, message):
    done = _run("train.py", tmp_path, "--annotations", demo_small, *args, "--out", tmp_path / "run")
    _one_error_line(done, message)
    assert "Received: " in done.stderr.splitlines()[-1]
    assert not (tmp_path / "run").exists()  # refused before the images were decoded or the run written


def test_the_largest_seed_and_smallest_input_build():
    import numpy as np

    from cropclf.config import ModelConfig
    from cropclf.model import build_model

    model = build_model(ModelConfig(width=4), (15, 40), {"a": 2}, seed=2**32 - 1)
    assert model(np.zeros((1, 15, 40, 3), np.float32))["a"].shape == (1, 2)
