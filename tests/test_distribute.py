"""Under a `tf.distribute` strategy, `fit` sees every region exactly once per epoch, in that epoch's order.

Each case runs this file as a script in a fresh Python (logical devices must be configured before
TensorFlow initialises): it trains a tiny model under `MirroredStrategy` on two logical CPUs, with a
loss that records, per replica and step, the label ids it receives. Every region has its own
``name`` label, so the labels say which regions each step was fed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
REGIONS, BATCH, EPOCHS = 41, 2, 3  # 21 batches (more than Keras queues), the last one short and padded


def run_fit(tmp_path, workers, mp, strategy="mirrored"):
    out = tmp_path / "record.json"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HERE), str(tmp_path), str(workers), str(int(mp)), strategy],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(out.read_text())


def steps_of(record, phase, epoch):
    """Per step of one epoch, the label ids each replica received: ``[{replica: ids}, ...]``."""
    steps = {}
    for ph, ep, step, replica, ids in record["calls"]:
        if ph == phase and ep == epoch:
            steps.setdefault(step, {})[replica] = ids
    return [parts for _, parts in sorted(steps.items())]


def check_epoch(steps, planned, regions: range):
    """Each replica got its planned part first (padding: its own regions again), every region once."""
    assert len(steps) == len(planned)
    fed = []
    for i, (got, want) in enumerate(zip(steps, planned)):
        assert sorted(got) == list(range(len(want)))
        assert len({len(ids) for ids in got.values()}) == 1  # the replicas' parts are equal in size
        for r, ids in got.items():
            assert ids[:len(want[r])] == want[r], f"step {i} replica {r}: fed {ids}, planned {want[r]}"
            fed += want[r]
    assert sorted(fed) == list(regions)
    return fed


@pytest.mark.slow
@pytest.mark.parametrize("workers, mp", [(1, False), (2, False), (2, True)])
def test_mirrored_fit_sees_each_region_once_per_epoch_in_order(tmp_path, workers, mp):
    record = run_fit(tmp_path, workers, mp)
    assert record["replicas"] == 2
    orders = []
    for epoch in range(EPOCHS):
        planned = record["train_parts"][epoch]  # per step, per replica: the region ids the sequence planned
        assert len(planned) == -(-REGIONS // BATCH)  # two replicas' parts of one: as many steps as batches
        orders.append(check_epoch(steps_of(record, "train", epoch), planned, range(REGIONS)))
        owners = [{r for step in planned for r in step[k]} for k in range(2)]
        assert not owners[0] & owners[1]  # each replica keeps its own regions
    assert len({tuple(o) for o in orders}) == EPOCHS  # the order is reshuffled every epoch
    for epoch in range(EPOCHS):  # validation: every region once, as planned, every epoch (no queue growing)
        val_ids = range(REGIONS, REGIONS + record["val_regions"])
        check_epoch(steps_of(record, "val", epoch), record["val_parts"], val_ids)


# --- the script each case runs ----------------------------------------------------------------


def _main(tmp, workers, mp, strategy_name):
    import cv2
    import keras
    import tensorflow as tf

    from cropclf.config import Config, CropConfig, ModelConfig
    from cropclf.data.labels import build_label_maps
    from cropclf.model import build_model
    from cropclf.data.sequence import CropSequence
    from cropclf.training import _strategy

    sys.path.insert(0, str(HERE.parent))
    from conftest import regions_frame
    from cpu_devices import split_cpu

    split_cpu(2)  # two replicas without GPUs, before TensorFlow fixes its devices
    cfg = Config().replace(**{"train.distribute": strategy_name})
    strategy = _strategy(cfg)
    rng = np.random.default_rng(0)
    image = tmp / "scene.png"
    cv2.imwrite(str(image), rng.integers(0, 255, (90, 130, 3), dtype=np.uint8))
    n_val = 25
    rows = [{"path": str(image), "x": 5.0 + 1.5 * k, "y": 10.0 + k, "width": 20.0, "height": 14.0,
             "name": f"r{k:02d}", "type": "ab"[k % 2]} for k in range(REGIONS + n_val)]
    frame = regions_frame(rows)
    maps = build_label_maps(frame, ["name", "type"])  # classes sorted: id k is region r{k:02d}
    crop = CropConfig(image_size=(16, 24), margin=0.1)
    kw = dict(workers=workers, use_multiprocessing=mp, replicas=strategy.num_replicas_in_sync, progress=False)
    train = CropSequence(frame.iloc[:REGIONS], maps, BATCH, crop, augment=True, seed=3, **kw)
    val = CropSequence(frame.iloc[REGIONS:], maps, BATCH, crop, augment=False, **kw)

    calls, where = [], {}

    def record(replica, ids):
        calls.append([where["phase"], where["epoch"], where["step"], int(replica), ids.numpy().tolist()])

    class RecordingLoss(keras.losses.CategoricalCrossentropy):
        def call(self, y_true, y_pred):
            ctx = tf.distribute.get_replica_context()
            replica = ctx.replica_id_in_sync_group if ctx is not None else 0
            tf.py_function(record, [replica, tf.argmax(y_true, -1)], [])
            return super().call(y_true, y_pred)

    class Where(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            where.update(phase="train", epoch=epoch)
            parts.append(planned(train))

        def on_train_batch_begin(self, batch, logs=None):
            where.update(phase="train", step=batch)

        def on_test_begin(self, logs=None):
            where["phase"] = "val"

        def on_test_batch_begin(self, batch, logs=None):
            where.update(phase="val", step=batch)

    def planned(seq):
        return [[[int(seq.labels["name"][p]) for p in part] for part in seq.parts(seq.epoch, i)]
                for i in range(len(seq))]

    parts = []
    with strategy.scope():
        model = build_model(ModelConfig(width=4), crop.image_size, {h: len(m) for h, m in maps.items()})
        model.compile(optimizer=keras.optimizers.SGD(0.01),
                      loss={"name": RecordingLoss(), "type": keras.losses.CategoricalCrossentropy()})
    model.fit(train, validation_data=val, epochs=EPOCHS, shuffle=False, callbacks=[Where()], verbose=0)
    train.close(), val.close()
    (tmp / "record.json").write_text(json.dumps({
        "replicas": strategy.num_replicas_in_sync, "calls": calls, "train_parts": parts,
        "val_regions": len(val.slots), "val_parts": planned(val)}))


if __name__ == "__main__":
    _main(Path(sys.argv[1]), int(sys.argv[2]), bool(int(sys.argv[3])), sys.argv[4])
