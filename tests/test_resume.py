"""A run killed at any write of an epoch end, or extended, or resumed with other workers, ends
exactly where an uninterrupted run ends: weights, optimizer state, learning rate, the counters of
early stopping and LR reduction, the dropout RNGs, the history and the data order.

Runs are subprocesses of `RUNNER`, which turns on TensorFlow's op determinism (so two runs of the
same work agree bit for bit on CPU) and counts the changes `cropclf.artifacts` makes to files: with
``KILL_AT=k`` it dies (``os._exit(9)``, as ``kill -9``) just before the k-th; for a
run marked so it copies the run directory, as a kill would leave it, just before each change
of the e-th epoch end (and the first of the next), so that one process gives every kill point and
one more resumes them all (one process per kill costs minutes on two cores). One kill point is
also a real ``os._exit``. The seam lives in the runner alone: library code reads no test setting.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # ~2 min on a free core; far more on a busy one

RUNNER = r"""
import json, os, shutil, sys, threading
from pathlib import Path

import tensorflow as tf

tf.config.experimental.enable_op_determinism()  # bit-identical results for identical work on CPU

import keras
import numpy as np
from cropclf import artifacts, training
from cropclf.config import Config
from cropclf.data.sequence import CropSequence

kill_at = int(os.environ.get("KILL_AT", "0"))
lock = threading.Lock()
run_dir = record_fd = None
snapping, snapshot_epoch = False, -1


def record(*item):
    with lock:  # unbuffered appends: a line written survives os._exit
        os.write(record_fd, (json.dumps(item) + "\n").encode())


class KillingOS:
    # The `os` that cropclf.artifacts sees: counts the calls that change a file.
    changes = 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _change(self, op, *paths):
        global snapping
        if op != "unlink" or os.path.exists(paths[0]):  # removing what is not there changes nothing
            KillingOS.changes += 1
            k = KillingOS.changes
            record("change", k, op, *[Path(p).name for p in paths])
            if snapping:
                shutil.copytree(run_dir, run_dir.with_name(f"{run_dir.name}.kill{k}"))
                snapping = snapping != "last"
            if k == kill_at:
                os._exit(9)
        return getattr(os, op)(*paths)

    def replace(self, a, b):
        return self._change("replace", a, b)

    def link(self, a, b):
        return self._change("link", a, b)

    def unlink(self, a):
        return self._change("unlink", a)


artifacts.os = KillingOS()
getitem = CropSequence.__getitem__


def recording_getitem(self, i):
    batch = getitem(self, i)
    if self.shuffle:  # the training sequence: which regions, and a digest of the pixels they became
        positions = self.order(self.epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        record("batch", self.epoch, i, positions.tolist(), float(batch[0].astype("float64").sum()))
    return batch


CropSequence.__getitem__ = recording_getitem
epoch_end = training.RunState.on_epoch_end


def recording_epoch_end(self, epoch, logs=None):
    global snapping
    record("epoch_end", epoch)
    if epoch == snapshot_epoch:
        snapping = True
    elif snapping:
        snapping = "last"  # the first change of the next epoch end, then no more
    return epoch_end(self, epoch, logs)


training.RunState.on_epoch_end = recording_epoch_end
callback_epoch_end = keras.callbacks.CallbackList.on_epoch_end
val_losses = None


def scripted_epoch_end(self, epoch, logs=None):
    # The validation loss every callback sees, scripted per job: which epochs improve must not hang on
    # how a 12-image run happens to train; everything else (weights, optimizer, data) is real.
    if val_losses is not None and logs is not None and "val_loss" in logs:
        logs["val_loss"] = val_losses[epoch]
    return callback_epoch_end(self, epoch, logs)


keras.callbacks.CallbackList.on_epoch_end = scripted_epoch_end

for job in json.loads(sys.argv[1]):  # run directories one after another, each as its command would
    run_dir = Path(job["dir"])
    record_fd = os.open(f"{run_dir}.records", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    KillingOS.changes, snapping, snapshot_epoch = 0, False, job["snapshot_epoch"]
    val_losses = job["val_losses"]
    training.train(Config.from_dict(job["cfg"]), run_dir, export=job["export"], log=lambda *a: record("log", *a))
    # What the run ends with, for the test to compare: the committed checkpoint and the best model.
    state = json.loads((run_dir / "state.json").read_text())
    arrays = {}
    for tag, path in (("last", run_dir / "checkpoints" / state["checkpoint"]), ("best", run_dir / "model.keras")):
        model = keras.models.load_model(path)
        for k, v in enumerate(model.weights):
            arrays[f"{tag}/weights/{k}/{v.name}"] = keras.ops.convert_to_numpy(v)
        for k, v in enumerate(model.optimizer.variables):  # names, not paths: those count models made
            arrays[f"{tag}/optimizer/{k}/{v.name}"] = keras.ops.convert_to_numpy(v)
    np.savez(f"{run_dir}.final.npz", **arrays)
    record("done")
os._exit(0)  # data-loader threads can keep a normal exit waiting
"""


FALLING = [1.0, 0.9, 0.8]  # every epoch a new best: an epoch end links a best model, unlinks the old one
RISING = [1.0, 1.1, 1.2]  # no epoch after the first improves: LR reduction and early stopping count


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """12 small scenes with a few regions each, and a config that trains 3 short epochs."""
    from cropclf.config import Config
    from cropclf.demo import make_demo_dataset

    folder = tmp_path_factory.mktemp("resume")
    csv = make_demo_dataset(folder / "data", n_images=12, image_size=(160, 120), objects_per_image=(2, 4),
                            seed=1, progress=False)
    cfg = Config().replace(**{"data.annotations": str(csv), "crop.image_size": [16, 16], "model.width": 4,
                              "train.epochs": 3, "train.batch_size": 8, "train.workers": 1,
                              "train.learning_rate": 0.01, "train.schedule": "plateau", "train.reduce_lr": 1,
                              "train.early_stopping": 2})
    (folder / "runner.py").write_text(RUNNER)
    return folder, cfg


def run(tiny, jobs, snapshot=None, **env):
    """Runs the runner on ``jobs`` (run directory name -> (config, export)) in one process; the
    run ``snapshot`` is copied as a kill would leave it at each change of its second epoch end."""
    folder, _ = tiny
    spec = [{"dir": str(folder / name), "cfg": cfg.to_dict(), "export": export,
             "snapshot_epoch": 1 if name == snapshot else -1,
             "val_losses": RISING if name in ("noisy", "short") else FALLING} for name, (cfg, export) in jobs.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           **{k.upper(): str(v) for k, v in env.items()}}
    before = {name: len(records(folder / f"{name}.records")) for name in jobs}  # a resume appends
    done = subprocess.run([sys.executable, str(folder / "runner.py"), json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == (9 if "KILL_AT" in env else 0), done.stderr[-3000:]
    return {name: records(folder / f"{name}.records")[before[name]:] for name in jobs}


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def baseline(tiny):
    """The uninterrupted run (copied as a kill would leave it at each change of its second epoch end),
    and, in the same process, one whose validation loss rises (`RISING`), so that early stopping and
    LR reduction count, with a 2-epoch run of the same to extend."""
    cfg = tiny[1]
    noisy = cfg.replace(**{"train.learning_rate": 0.03})
    jobs = {"baseline": (cfg, False), "noisy": (noisy, False), "short": (noisy.replace(**{"train.epochs": 2}), True)}
    return run(tiny, jobs, snapshot="baseline")


def final(tiny, name):
    folder = tiny[0]
    state = json.loads((folder / name / "state.json").read_text())
    with np.load(folder / f"{name}.final.npz") as f:
        arrays = dict(f)
    return state, arrays


def batches(records):
    """epoch -> {batch: (positions, pixel digest)}, for every training batch built."""
    out = {}
    for r in records:
        if r[0] == "batch":
            out.setdefault(r[1], {})[r[2]] = (r[3], r[4])
    return out


def trained_epochs(records):
    """Epochs whose every batch was built (Keras also peeks at the first batches before training)."""
    seen = batches(records)
    return sorted(e for e, got in seen.items() if len(got) == max(map(len, seen.values())))


def assert_same_run(tiny, name, baseline_records, records, reference="baseline"):
    base_state, base_arrays = final(tiny, reference)
    state, arrays = final(tiny, name)
    # history (with the learning rate per epoch), counters, RNG states, best value, checkpoint names
    assert state == base_state
    assert sorted(arrays) == sorted(base_arrays)
    for key, value in base_arrays.items():  # weights, BN statistics, iterations, LR, Adam's slots
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
    folder = tiny[0]
    for artefact in ("history.json", "history.csv"):
        assert (folder / name / artefact).read_text() == (folder / reference / artefact).read_text()
    assert [p.name for p in (folder / name).rglob(".*")] == []  # no temporary file left
    assert {p.name for p in (folder / name / "checkpoints").iterdir()} == {state["checkpoint"],
                                                                           state["best_checkpoint"]}
    base = batches(baseline_records)  # data order: each batch resumed is the uninterrupted run's
    for epoch, got in batches(records).items():
        for i, batch in got.items():
            assert batch == base[epoch][i], (epoch, i)


def test_kill_at_every_write_of_an_epoch_end_resumes_exactly(tiny, baseline):
    folder, cfg = tiny
    base = baseline["baseline"]
    assert final(tiny, "baseline")[0]["epoch"] == 3
    # The second epoch end: it replaces an earlier checkpoint and (the loss still falls fast at lr
    # 0.01) publishes a new best model: every kind of change an epoch end makes.
    second = base.index(["epoch_end", 1])
    changes = [r for r in base[second:base.index(["epoch_end", 2])] if r[0] == "change"]
    assert any(r[2:4] == ["link", "epoch-0002.keras"] for r in changes), changes  # a new best model
    assert any(r[2:4] == ["unlink", "epoch-0001.keras"] for r in changes), changes
    commit = next(r[1] for r in changes if r[2] == "replace" and r[4] == "state.json")
    points = [r[1] for r in changes] + [changes[-1][1] + 1]  # and the first change of the third epoch end
    assert sorted(int(p.name.rpartition("kill")[2]) for p in folder.glob("baseline.kill*[0-9]")) == points

    killed = run(tiny, {"killed": (cfg, False)}, kill_at=commit)["killed"]  # a real kill, at the commit
    assert killed[-1] == ["change", commit, "replace", killed[-1][3], "state.json"]
    jobs = {"killed": (cfg, False), **{f"baseline.kill{k}": (cfg, False) for k in points}}
    resumed = run(tiny, jobs)
    for name, k in [("killed", commit), *[(f"baseline.kill{k}", k) for k in points]]:
        assert resumed[name][-1] == ["done"], name
        committed = 2 if k > commit else 1  # killed just before change k: the commit happened or not
        assert ["log", f"Resuming {folder / name} after epoch {committed} of 3."] in resumed[name], name
        assert trained_epochs(resumed[name]) == list(range(committed + 1, 4)), name  # each epoch once
        assert_same_run(tiny, name, base, resumed[name])


def test_extended_run_with_other_workers_equals_an_uninterrupted_one(tiny, baseline):
    folder, cfg = tiny
    assert json.loads((folder / "short" / "status.json").read_text())["state"] == "complete"
    short = final(tiny, "short")[0]
    assert short["epoch"] == 2 and short["callbacks"]["EarlyStopping"]["wait"] > 0  # counters to carry over
    noisy = final(tiny, "noisy")[0]
    assert noisy["history"]["learning_rate"][0] > noisy["history"]["learning_rate"][-1]  # the LR was cut
    extend = cfg.replace(**{"train.learning_rate": 0.03, "train.workers": 2})
    records = run(tiny, {"short": (extend, True)})["short"]
    assert ["log", f"Extending {folder / 'short'} from 2 to 3 epochs."] in records
    assert trained_epochs(records) == [3]  # exactly one more epoch
    assert any(r[0] == "log" and r[1].startswith("Exported SavedModel") for r in records)  # exported again
    assert json.loads((folder / "short" / "status.json").read_text())["state"] == "complete"
    assert_same_run(tiny, "short", baseline["noisy"], records, reference="noisy")
