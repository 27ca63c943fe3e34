"""`--distribute multiworker`: `MultiWorkerMirroredStrategy` from ``TF_CONFIG``, with two real worker
processes on loopback ports (CPU only), started exactly as a user starts them on two hosts.

Every worker runs ``scripts/train.py`` unchanged. A ``sitecustomize`` put on the workers' path (a test
seam, kept out of the library) turns on op determinism and records, per worker, epoch, batch and
replica part, the region ids each `CropSequence.crops` call cuts, so the test sees who built what.
The reference is one process with two replicas (`MirroredStrategy` on two logical CPUs) and the
same global batch: the same model within ``TOLERANCE``.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

TRAIN = str(REPO / "scripts" / "train.py")
EPOCHS = 3
TOLERANCE = 1e-5  # max |weight difference|, two workers vs one process with two replicas (float32 sums)
SMALL = ["--epochs", str(EPOCHS), "--batch-size", "16", "--image-size", "32", "--workers", "1",
         "--set", "model.width=4", "--set", "train.early_stopping=9", "--set", "train.peer_timeout=120"]

SITE = r'''
import os
if os.environ.get("CROPCLF_CLUSTER_FD") or os.environ.get("MW_SPLIT_CPU"):  # a process that trains
    import json
    import tensorflow as tf
    if os.environ.get("MW_SPLIT_CPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    tf.config.experimental.enable_op_determinism()  # identical work gives identical results
    from cropclf.data.sequence import CropSequence
    _crops = CropSequence.crops

    def crops(self, positions, epoch=0, batch=0, part=None):
        line = {"pid": os.getpid(), "worker": self.shard[0], "kind": "train" if self.shuffle else "val",
                "epoch": int(epoch), "batch": int(batch), "part": part, "ids": [int(self.index[p]) for p in positions]}
        fd = os.open(os.path.join(os.environ["MW_RECORD"], "crops.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (json.dumps(line) + "\n").encode())
        os.close(fd)
        return _crops(self, positions, epoch, batch, part)

    CropSequence.crops = crops
    from cropclf.data.patches import PatchStore
    _init = PatchStore.__init__

    def init(self, frame, *a, **k):  # which regions each process decodes
        line = {"pid": os.getpid(), "task": json.loads(os.environ.get("TF_CONFIG", "{}")).get("task"),
                "ids": [int(i) for i in frame.index]}
        fd = os.open(os.path.join(os.environ["MW_RECORD"], "stores.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (json.dumps(line) + "\n").encode())
        os.close(fd)
        return _init(self, frame, *a, **k)

    PatchStore.__init__ = init
'''


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def environment(tmp_path, **extra):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    (tmp_path / "record").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CROPCLF_CLUSTER_FD")}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", CUDA_VISIBLE_DEVICES="", CROPCLF_QUIET="1",
               MW_RECORD=str(tmp_path / "record"),
               PYTHONPATH=os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]), **extra)
    return env


def start(tmp_path, name, args, **env):
    with open(tmp_path / f"{name}.log", "ab") as out:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, TRAIN, *map(str, args)], env=environment(tmp_path, **env),
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)


def log_of(tmp_path, name):
    return (tmp_path / f"{name}.log").read_text(errors="replace")


def cluster(tmp_path, demo, tag="", wait=True, ports=None):
    """Starts worker 0 (the chief, run directory ``chief``) and worker 1 (``worker1``, its own "host")."""
    ports = ports or free_ports(2)
    procs = []
    for index in (0, 1):
        tmp = tmp_path / f"tmp{index}"
        tmp.mkdir(exist_ok=True)
        out = tmp_path / ("chief" if index == 0 else "worker1")
        procs.append(start(tmp_path, f"worker{index}{tag}", ["--annotations", demo, "--out", out, *SMALL,
                                                              "--distribute", "multiworker"],
                           TF_CONFIG=tf_config(ports, index), TMPDIR=str(tmp)))
    if wait:
        for index, p in enumerate(procs):
            assert p.wait(timeout=600) == 0, log_of(tmp_path, f"worker{index}{tag}")[-4000:]
    return procs


def records(tmp_path, name="crops"):
    lines = (tmp_path / "record" / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def weights_of(path):
    import keras

    return [np.asarray(w) for w in keras.models.load_model(path, compile=False).get_weights()]


@pytest.fixture(scope="module")
def two_workers(demo_small, tmp_path_factory):
    """One uninterrupted two-worker run."""
    tmp_path = tmp_path_factory.mktemp("two_workers")
    cluster(tmp_path, demo_small)
    return tmp_path


@pytest.mark.slow
def test_two_workers_train_like_one_process_with_two_replicas(two_workers, demo_small, tmp_path):
    ref = start(tmp_path, "reference", ["--annotations", demo_small, "--out", tmp_path / "ref", *SMALL,
                                        "--distribute", "mirrored"], MW_SPLIT_CPU="2")
    assert ref.wait(timeout=600) == 0, log_of(tmp_path, "reference")[-4000:]
    chief, ref_dir = two_workers / "chief", tmp_path / "ref"
    got, want = json.loads((chief / "history.json").read_text()), json.loads((ref_dir / "history.json").read_text())
    assert len(got["loss"]) == EPOCHS
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert [got[k] for k in got if k.endswith("accuracy")] == [want[k] for k in want if k.endswith("accuracy")]
    pairs = zip(weights_of(chief / "model.keras"), weights_of(ref_dir / "model.keras"))
    diffs = [np.abs(a - b).max() for a, b in pairs]
    assert max(diffs) <= TOLERANCE
    report, ref_report = (json.loads((d / "evaluation" / "report.json").read_text()) for d in (chief, ref_dir))
    assert {**report, "run": None} == {**ref_report, "run": None}  # the same scores on the test split


@pytest.mark.slow
def test_only_the_chief_writes(two_workers):
    chief = two_workers / "chief"
    for name in ("config.json", "state.json", "history.csv", "history.json", "model.keras", "tensorboard",
                 "saved_model", "evaluation/report.json", "checkpoints"):
        assert (chief / name).exists(), name
    assert json.loads((chief / "status.json").read_text())["state"] == "complete"
    assert not (two_workers / "worker1").exists()  # worker 1's own "host": nothing written there
    assert list((two_workers / "tmp1").iterdir()) == []  # its temporary run directory is gone
    assert "Worker done" in log_of(two_workers, "worker1")


@pytest.mark.slow
def test_each_worker_builds_only_its_share_of_every_batch(two_workers):
    lines = records(two_workers)
    built: dict = {}
    lines = [line for line in lines if line["part"] is not None]  # training's sequences (not the evaluation)
    for line in lines:  # a batch built again by the same worker (Keras peeks at one) is the same batch
        built.setdefault((line["kind"], line["epoch"], line["batch"]), {}).setdefault(line["worker"], set()).update(
            line["ids"])
    assert {w for by in built.values() for w in by} == {0, 1}
    for key, by_worker in built.items():
        assert not (by_worker.get(0, set()) & by_worker.get(1, set())), f"{key}: a region built by both workers"
    every = set().union(*(ids for (kind, _, _), by in built.items() if kind == "train" for ids in by.values()))
    for epoch in range(1, EPOCHS + 1):  # the sequence numbers Keras' epoch e as e + 1
        batches = [set().union(*by.values()) for (kind, e, _), by in built.items() if kind == "train" and e == epoch]
        assert sum(len(b) for b in batches) == len(set().union(*batches)) == len(every), epoch  # each once
        assert all(len(by) == 2 for (kind, e, _), by in built.items() if kind == "train" and e == epoch)
    val = [by for (kind, _, _), by in built.items() if kind == "val"]
    assert val and all(len(by) <= 2 for by in val)
    over_run = [set().union(*(by.get(w, set()) for by in built.values())) for w in (0, 1)]
    assert over_run[0] and over_run[1] and not over_run[0] & over_run[1]  # a region belongs to one worker


@pytest.mark.slow
def test_no_region_is_decoded_by_two_workers(two_workers, demo_small):
    first = {}
    for line in records(two_workers, "stores"):  # a process's first store is training's (then the evaluation's)
        first.setdefault(line["pid"], line)
    decoded = {line["task"]["index"]: set(line["ids"]) for line in first.values() if line["task"]}
    assert sorted(decoded) == [0, 1] and decoded[0] and decoded[1]
    assert not decoded[0] & decoded[1]
    split = pd.read_csv(two_workers / "chief" / "split.csv")
    training_images = set(split.loc[split["split"].isin(["train", "val"]), "path"])
    from cropclf.via import read_annotations

    frame = read_annotations(demo_small)
    want = {int(i) for i, path in zip(frame.index, frame["path"]) if path in training_images}
    assert decoded[0] | decoded[1] == want  # every train and validation region, each decoded once


@pytest.mark.slow
def test_a_killed_worker_and_a_restart_resume_from_the_last_epoch(two_workers, demo_small, tmp_path):
    procs = cluster(tmp_path, demo_small, wait=False)
    state = tmp_path / "chief" / "state.json"
    deadline = time.monotonic() + 600
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
        assert time.monotonic() < deadline and procs[0].poll() is None, log_of(tmp_path, "worker0")[-3000:]
        time.sleep(0.2)
    worker = children(procs[1].pid)
    assert worker, "worker 1 runs in a child of the command"
    os.kill(worker[0], signal.SIGKILL)  # mid-epoch 2: epoch 1 is committed
    assert procs[1].wait(timeout=60) != 0
    assert procs[0].wait(timeout=180) == 2  # the chief notices its peer is gone and stops: no hang
    errors = [line for line in log_of(tmp_path, "worker0").splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TF_CONFIG" in errors[0] and "start the same command on every host" in errors[0]
    committed = json.loads(state.read_text())["epoch"]
    assert 1 <= committed < EPOCHS
    cluster(tmp_path, demo_small, tag="-again")
    for name in ("worker0-again", "worker1-again"):
        assert f"after epoch {committed} of {EPOCHS}" in log_of(tmp_path, name)
    history = json.loads((tmp_path / "chief" / "history.json").read_text())
    uninterrupted = json.loads((two_workers / "chief" / "history.json").read_text())
    assert history["loss"] == uninterrupted["loss"]  # the same training steps, to the bit
    # BatchNorm's moving averages are per replica under tf.distribute and a checkpoint holds the chief's:
    # after a resume worker 1 continues from those, so its share of the validation scores shifts a little
    np.testing.assert_allclose(history["val_loss"], uninterrupted["val_loss"], rtol=0.02)
    last = f"checkpoints/epoch-{EPOCHS:04d}.keras"
    for a, b in zip(weights_of(tmp_path / "chief" / last), weights_of(two_workers / "chief" / last)):
        np.testing.assert_allclose(a, b, atol=TOLERANCE)


def answers(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def children(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


# --- a worker that cannot form its cluster -----------------------------------------------------


@pytest.mark.slow
def test_an_unreachable_peer_fails_within_the_time_out(demo_small, tmp_path):
    ports = free_ports(2)  # nothing listens on the second
    t0 = time.monotonic()
    p = start(tmp_path, "alone", ["--annotations", demo_small, "--out", tmp_path / "run", *SMALL,
                                  "--distribute", "multiworker", "--set", "train.peer_timeout=10"],
              TF_CONFIG=tf_config(ports, 0))
    assert p.wait(timeout=120) == 2
    assert time.monotonic() - t0 < 90
    errors = [line for line in log_of(tmp_path, "alone").splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log_of(tmp_path, "alone")[-3000:]
    assert "TF_CONFIG" in errors[0] and f"worker 1 at 127.0.0.1:{ports[1]}" in errors[0] and "10 s" in errors[0]


@pytest.mark.slow
def test_sigterm_stops_a_worker_waiting_for_its_peer(demo_small, tmp_path):
    ports = free_ports(2)
    p = start(tmp_path, "waiting", ["--annotations", demo_small, "--out", tmp_path / "run", *SMALL,
                                    "--distribute", "multiworker", "--set", "train.peer_timeout=600"],
              TF_CONFIG=tf_config(ports, 1))  # worker 1: the leader, worker 0, is missing
    deadline = time.monotonic() + 120
    while not answers(ports[1]):  # the worker's TensorFlow server is up: it waits for worker 0 now
        assert time.monotonic() < deadline and p.poll() is None, log_of(tmp_path, "waiting")[-3000:]
        time.sleep(0.2)
    worker = children(p.pid)[0]
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert not os.path.exists(f"/proc/{worker}") or open(f"/proc/{worker}/stat").read().split()[2] == "Z"


# --- TF_CONFIG checked before anything starts ---------------------------------------------------


@pytest.mark.parametrize("value, message", [
    (None, "needs the environment variable TF_CONFIG"),
    ("", "needs the environment variable TF_CONFIG"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG needs "cluster"'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', 'TF_CONFIG\'s "task"'),
    ('{"cluster": {"worker": ["a:1"]}}', 'TF_CONFIG\'s "task"'),
])
def test_missing_or_invalid_tf_config_is_one_error_line(tmp_path, value, message):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    if value is not None:
        env["TF_CONFIG"] = value
    done = subprocess.run([sys.executable, TRAIN, "--distribute", "multiworker", "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Received:" in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


# --- the sharded sequence, in one process ------------------------------------------------------


def sharp_regions(tmp_path, n, images=1):
    """``n`` regions on ``images`` 70x110 black-and-white noise images; region k's ``name`` is ``r{k:02d}``."""
    from conftest import regions_frame, write_image

    rng = np.random.default_rng(1)
    paths = [write_image(tmp_path / f"noise{j}.png", (rng.integers(0, 2, (70, 110, 3)) * 255).astype(np.uint8))
             for j in range(images)]
    rows = [{"path": str(paths[k % images]), "x": 3.0 + 4 * k, "y": 2.0 + 2 * k, "width": 17.0, "height": 11.0,
             "name": f"r{k:02d}", "type": "ab"[k % 2]} for k in range(n)]
    return regions_frame(rows)


@pytest.mark.parametrize("n, batch, images", [(14, 4, 1), (11, 4, 1), (8, 4, 1), (9, 6, 1), (14, 4, 5), (23, 6, 4)])
def test_two_shards_build_exactly_the_replica_parts_of_one_process(tmp_path, n, batch, images):
    from cropclf.config import CropConfig
    from cropclf.data.labels import build_label_maps
    from cropclf.data.sequence import CropSequence

    frame = sharp_regions(tmp_path, n, images)
    maps = build_label_maps(frame, ["name", "type"])
    kw = dict(crop=CropConfig(image_size=(12, 20)), augment=True, seed=5, replicas=2, progress=False)
    whole = CropSequence(frame, maps, batch, **kw)
    shards = [CropSequence(frame, maps, batch, shard=(w, 2), **kw) for w in (0, 1)]  # each decodes its own
    decoded = [set(seq.store.slot) for seq in shards]
    assert not decoded[0] & decoded[1] and decoded[0] | decoded[1] == set(frame.index)  # no region decoded twice
    if images > 1:  # whole images per worker, save the one the cut falls inside
        assert len({p for seq in shards for p in set(frame.loc[list(seq.store.slot), "path"])}) <= images + 1
    built = {0: [], 1: []}
    for w, seq in enumerate(shards):
        crops = seq.crops
        seq.crops = lambda positions, *a, _w=w, _s=seq, _crops=crops: (
            built[_w].append(set(_s.index[positions])) or _crops(positions, *a))
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for epoch in (1, 2):
        seen = []
        for i in range(len(whole)):
            X, y, wt = whole.batch(epoch, i)
            parts = [seq.batch(epoch, i) for seq in shards]
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), X)  # pixels, augmentation included
            for key in y:
                np.testing.assert_array_equal(np.concatenate([p[1][key] for p in parts]), y[key])
                np.testing.assert_array_equal(np.concatenate([p[2][key] for p in parts]), wt[key])
            assert not built[0][-1] & built[1][-1]  # no region built by both workers
            assert built[0][-1] <= decoded[0] and built[1][-1] <= decoded[1]  # only its own
            seen += list(built[0][-1]) + list(built[1][-1])
        assert sorted(seen) == sorted(frame.index)  # each region once per epoch across the two workers
    assert [sorted(frame.index[p] for p in whole.order(e)) for e in (1, 2)] == [sorted(frame.index)] * 2


def test_a_worker_without_regions_feeds_blank_weightless_crops_and_a_short_part_repeats_its_own(tmp_path):
    from cropclf.config import CropConfig
    from cropclf.data.labels import build_label_maps
    from cropclf.data.sequence import CropSequence

    frame = sharp_regions(tmp_path, 5)  # parts of 2: replica 0 owns 3 regions, replica 1 owns 2
    maps = build_label_maps(frame, ["name", "type"])
    kw = dict(crop=CropConfig(image_size=(12, 20), pad_value=7), replicas=2, progress=False)
    first, second = (CropSequence(frame, maps, 4, shard=(w, 2), **kw) for w in (0, 1))
    assert len(first) == len(second) == 2
    X, y, w = second.batch(0, 1)  # replica 1 has no region left: its own again, weightless
    assert X.shape == (1, 12, 20, 3) and not (X == 7).all()
    assert all((v == 0).all() for v in w.values())
    X, y, w = first.batch(0, 1)
    assert X.shape == (1, 12, 20, 3) and all((v == 1).all() for v in w.values())
    alone = CropSequence(frame.iloc[:1], maps, 4, shard=(1, 2), **kw)  # one region: worker 1 owns nothing
    assert len(alone) == 1 and len(alone.store) == 0
    X, y, w = alone.batch(0, 0)
    assert X.shape == (1, 12, 20, 3) and (X == 7).all() and all((v == 0).all() for v in w.values())


@pytest.mark.parametrize("replicas", [2, 3, 4, 8])
def test_replica_owners_balance_regions_and_keep_images_whole(replicas):
    from cropclf.data.sequence import replica_owners

    rng = np.random.default_rng(replicas)
    paths = [f"img{k:03d}.jpg" for k in rng.integers(0, 600, 3000)]
    frame = pd.DataFrame({"path": paths})
    owners = replica_owners(frame, replicas, seed=1)
    counts = np.bincount(owners, minlength=replicas)
    assert counts.max() - counts.min() <= 1
    split_images = sum(frame[owners == r]["path"].isin(frame[owners != r]["path"]).any() for r in range(replicas))
    assert split_images <= 2 * (replicas - 1)  # each cut splits at most one image, shared by two replicas
    np.testing.assert_array_equal(owners, replica_owners(frame.copy(), replicas, seed=1))  # every worker alike
    assert (owners != replica_owners(frame, replicas, seed=2)).any()
    classes = frame["path"].str[3:6].astype(int) < 300  # images named by class: shares are still mixed
    assert all(0.2 < classes[owners == r].mean() < 0.8 for r in range(replicas))
