import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import REPO, small_config

pytestmark = pytest.mark.slow
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CROPCLF_QUIET": "1"}


def script(name, *args, **popen):
    return [sys.executable, str(REPO / "scripts" / name), *map(str, args)]


def test_run_directory_holds_everything(trained_run):
    for name in ("config.json", "labels.json", "split.csv", "data_report.json", "model.keras", "history.csv",
                 "history.json", "curves.png", "saved_model/saved_model.pb", "status.json", "tensorboard"):
        assert (trained_run / name).exists(), name
    assert json.loads((trained_run / "status.json").read_text())["state"] == "complete"
    assert not list(trained_run.glob(".*.tmp")) and not list(trained_run.glob(".*.keras"))
    split = pd.read_csv(trained_run / "split.csv")
    assert split["path"].is_unique and set(split["split"]) == {"train", "val", "test"}
    history = json.loads((trained_run / "history.json").read_text())
    assert {"name_accuracy", "type_accuracy", "val_name_accuracy", "val_type_accuracy"} <= set(history)


def test_learning_happens(trained_run):
    from cropclf.evaluation import evaluate_run

    report = evaluate_run(trained_run, log=lambda *a: None)
    # chance is 0.2 (5 shapes) and 0.25 (4 colours)
    assert report["heads"]["type"]["accuracy"] > 0.7
    assert report["heads"]["name"]["accuracy"] > 0.3  # shapes learn slower: ~0.4 after 15 short epochs
    assert (trained_run / "evaluation" / "confusion_name.png").exists()
    assert (trained_run / "evaluation" / "worst.png").exists()


def test_same_command_after_completion_does_not_retrain(trained_run, demo_medium):
    from cropclf.training import train

    messages = []
    train(small_config(demo_medium), trained_run, log=messages.append)
    assert any("already complete" in m for m in messages)


def _train_cmd(demo, out, epochs):
    return script("train.py", "--annotations", demo, "--out", out, "--epochs", epochs, "--image-size", "32",
                  "--batch-size", "16", "--set", "model.width=8", "--no-evaluate")


def _wait_for_epoch(out, epoch, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = out / "state.json"
        if state.exists() and json.loads(state.read_text())["epoch"] >= epoch:
            return
        assert proc.poll() is None, "training exited early"
        time.sleep(0.2)
    raise AssertionError("training did not reach the epoch in time")


def test_killed_run_resumes_from_last_completed_epoch(demo_medium, tmp_path):
    out = tmp_path / "run"
    cmd = _train_cmd(demo_medium, out, 6)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epoch(out, 2, proc)
    time.sleep(0.5)  # mid-epoch 3 or so
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((out / "state.json").read_text())["epoch"]
    assert done >= 2
    state = json.loads((out / "state.json").read_text())
    keras.models.load_model(out / "checkpoints" / state["checkpoint"])  # whole, not half-written
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Resuming {out} after epoch {done} of 6" in again.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) <= 6 and json.loads((out / "status.json").read_text())["state"] == "complete"


def _default_sigint():
    # A background job (`make test &`, nohup, some CI runners) starts with SIGINT ignored, and a child
    # inherits that; Python then never raises KeyboardInterrupt. Give the child Ctrl-C's usual meaning.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_marks_the_run_interrupted(demo_medium, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(demo_medium, out, 30), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)
    try:
        _wait_for_epoch(out, 1, proc)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a 30-epoch run behind a failed test
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout
    assert "Traceback" not in stdout
    assert json.loads((out / "status.json").read_text())["state"] == "interrupted"


def test_distributed_training_on_two_logical_cpus(demo_small, tmp_path):
    out = tmp_path / "run"
    cmd = script("train.py", "--annotations", demo_small, "--out", out, "--epochs", 2, "--image-size", "32",
                 "--set", "model.width=8", "--distribute", "mirrored", "--no-evaluate")
    cmd[1:1] = [str(REPO / "tests" / "cpu_devices.py"), "2"]  # two logical CPUs: the test hook, not the library's
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Distributed training: 2 replicas (MirroredStrategy)" in done.stdout
    assert (out / "saved_model" / "saved_model.pb").exists()


@pytest.mark.parametrize("args, message", [
    (["--annotations", "/no/such/file.csv"], "no/such/file.csv"),
    (["--heads", "name,colour"], "no attribute 'colour'"),
    (["--image-size", "big"], "--image-size takes N or HxW"),
    (["--set", "train.epochz=3"], "Unknown config key 'train.epochz'"),
])
def test_bad_input_is_one_line_and_nonzero(demo_small, tmp_path, args, message):
    args = ["--annotations", demo_small, *args] if "--annotations" not in args else args
    done = subprocess.run(script("train.py", *args, "--out", tmp_path / "r"), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error:")  # after TensorFlow's own start-up noise


def test_completed_run_extends_with_more_epochs_and_resumes_with_other_workers(demo_small, tmp_path):
    out = tmp_path / "run"

    def train_py(*args):
        cmd = script("train.py", "--annotations", demo_small, "--out", out, "--image-size", "16", "--batch-size", 16,
                     "--set", "model.width=4", "--no-evaluate", *args)
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)

    first = train_py("--epochs", 1, "--workers", 2)
    assert first.returncode == 0, first.stderr[-3000:]
    history = json.loads((out / "history.json").read_text())
    more = train_py("--epochs", 2, "--workers", 1)  # workers change how batches load, not what they hold
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"Extending {out} from 1 to 2 epochs." in more.stdout
    assert f"Resuming {out} after epoch 1 of 2." in more.stdout
    assert "Exported SavedModel" in more.stdout
    extended = json.loads((out / "history.json").read_text())
    assert len(extended["loss"]) == 2 and extended["loss"][0] == history["loss"][0]  # one more epoch, not two
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    again = train_py("--epochs", 2)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-3000:]
    other = train_py("--epochs", 2, "--batch-size", 8)
    assert other.returncode == 2
    assert "train.batch_size: 16 there, 8 now" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.parametrize("weights", [None, "trunk"])
def test_cosine_schedule_sets_each_epochs_rate_and_survives_a_resume(demo_small, tmp_path, weights):
    from cropclf.model import build_model, learning_rate_at
    from cropclf.training import train

    over = {"train.schedule": "cosine", "train.warmup_epochs": 1, "train.epochs": 4, "model.width": 4}
    if weights:  # a pretrained trunk: frozen epochs, then fine-tuning at a lower rate, each on its own cosine
        build_model(small_config(demo_small, **over).model, (32, 32), {"a": 2}).get_layer("trunk").save_weights(
            tmp_path / "t.weights.h5")
        over.update({"model.weights": str(tmp_path / "t.weights.h5"), "train.freeze_epochs": 2})
    cfg = small_config(demo_small, **over)
    # stopped after 2 epochs, then resumed to 4 (train.epochs may grow on a resume; the curve follows the budget)
    train(cfg.replace(**{"train.epochs": 2}), tmp_path / "run", export=False, log=lambda *a: None)
    train(cfg, tmp_path / "run", export=False, log=lambda *a: None)
    rates = json.loads((tmp_path / "run" / "history.json").read_text())["learning_rate"]
    expected = [learning_rate_at(cfg, e) for e in range(4)]
    assert rates == pytest.approx(expected, rel=1e-5)
    base = cfg.train.learning_rate
    if weights:
        factor = cfg.train.finetune_lr_factor
        assert expected == pytest.approx([base / 2, base, base * factor / 2, base * factor])
    else:
        assert expected == pytest.approx([base / 2, base, base * 0.75, base * 0.25])


@pytest.mark.parametrize("early_stopping, epochs_run", [(0, 5), (2, 4)])
def test_default_recipe_runs_its_cosine_budget_and_keeps_the_best_epoch(demo_small, tmp_path, monkeypatch,
                                                                         early_stopping, epochs_run):
    """The default (cosine, no early stopping) trains every epoch of its budget however the validation loss
    swings, and `model.keras` is the best epoch's checkpoint; `train.early_stopping=N` still stops."""
    from cropclf.config import Config
    from cropclf.model import learning_rate_at
    from cropclf.training import train

    assert Config().train.schedule == "cosine" and Config().train.early_stopping == 0
    scripted = [0.9, 0.5, 0.8, 0.7, 0.6]  # best at epoch 2, then two epochs worse than it, then better again
    original = keras.callbacks.CallbackList.on_epoch_end

    def scripted_epoch_end(self, epoch, logs=None):  # every callback sees the scripted validation loss
        if logs is not None and "val_loss" in logs:
            logs["val_loss"] = scripted[epoch]
        return original(self, epoch, logs)

    monkeypatch.setattr(keras.callbacks.CallbackList, "on_epoch_end", scripted_epoch_end)
    cfg = small_config(demo_small, **{"train.epochs": 5, "model.width": 4, "train.early_stopping": early_stopping})
    run = train(cfg, tmp_path / "run", export=False, log=lambda *a: None)
    history = json.loads((run / "history.json").read_text())
    assert len(history["val_loss"]) == epochs_run
    assert history["learning_rate"] == pytest.approx([learning_rate_at(cfg, e) for e in range(epochs_run)], rel=1e-5)
    best = keras.models.load_model(run / "checkpoints" / "epoch-0002.keras").get_weights()
    for a, b in zip(keras.models.load_model(run / "model.keras").get_weights(), best):
        np.testing.assert_array_equal(a, b)
