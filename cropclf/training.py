"""Training: one run directory holds everything needed to reproduce and use the run.

``run/``: ``config.json`` (resolved), ``labels.json``, ``split.csv`` (which image went where),
``data_report.json`` (every region or image left out, and why), ``model.keras`` (best by validation
loss), ``history.csv``/``history.json``, ``curves.png``, ``tensorboard/``, ``saved_model/`` and
``status.json``. ``state.json`` + ``checkpoints/`` let a killed run resume from its last committed
epoch with the same command (see `RunState`). Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from cropclf import artifacts, cluster
from cropclf.config import Config
from cropclf.data.loading import Prepared, prepare, print_problems, read_split
from cropclf.errors import ConfigError, CropclfError, ImageError
from cropclf.data.labels import balanced_class_weights, label_maps_to_json, load_label_maps, output_keys
from cropclf.model import apply_stage, build_model, learning_rate_at, stage, stage_spans, trunk_layers
from cropclf.plots import learning_curves
from cropclf.data.sequence import CropSequence, owned_rows


def train(cfg: Config, run_dir, overwrite: bool = False, export: bool = True, log=print,
          frame: pd.DataFrame | None = None) -> Path | None:
    """Trains (or resumes) the run in ``run_dir`` and returns its path.

    ``frame``: the regions `cropclf.data.loading.load_frame` already read for this config, if any.

    Under ``train.distribute="multiworker"`` every worker of ``TF_CONFIG`` runs this; the chief alone
    writes ``run_dir`` (and exports). The other workers receive the chief's resume files through a
    collective, write everything to a temporary directory they remove at the end (TensorFlow's
    multi-worker guide: every worker saves, since saving may take part in collectives, but only the
    chief's copy is kept), and return None.
    """
    run_dir = Path(run_dir)
    strategy = _strategy(cfg)  # a multi-worker strategy joins the cluster here, before anything is read
    chief = cluster.is_chief(strategy) if cfg.train.distribute == "multiworker" else True
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="cropclf-worker-"))
    if chief and overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    try:
        if cfg.train.distribute == "multiworker":
            run_dir = _share_resume_files(strategy, run_dir if chief else scratch / "run", chief)
        result = _train(cfg, run_dir, strategy, chief, export, log, frame)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result if chief else None


def _share_resume_files(strategy, run_dir: Path, chief: bool) -> Path:
    """Gives every worker the chief's resume files (a non-chief worker's ``run_dir`` is temporary)."""
    names = None
    if chief:
        names = ["config.json", "labels.json", "split.csv", "status.json", "state.json"]
        state = _read_json(run_dir / "state.json")
        if isinstance(state, dict):
            names += [f"{CHECKPOINTS}/{state[k]}" for k in ("checkpoint", "best_checkpoint")
                      if isinstance(state.get(k), str)]
    files = cluster.broadcast_files(strategy, run_dir, names)
    if not chief:
        for name, data in files.items():
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_bytes(data)
    return run_dir


def _train(cfg: Config, run_dir: Path, strategy, chief: bool, export: bool, log, frame) -> Path:
    status = _read_json(run_dir / "status.json")
    saved = _read_json(run_dir / "config.json")
    if saved is not None:
        _check_same_run(Config.from_dict(saved, source=str(run_dir / "config.json")), cfg, run_dir)
    state = committed_state(run_dir)
    left = _epochs_left(state, cfg)
    if status and status.get("state") == "complete":
        if left == 0 or state is None:
            log(f"Run {run_dir} is already complete; pass --overwrite to train it again.")
            return run_dir
        log(f"Extending {run_dir} from {state['epoch']} to {cfg.train.epochs} epochs.")
        shutil.rmtree(run_dir / "evaluation", ignore_errors=True)  # it scored the model being replaced
    if state and state["stopped"] and left:  # extending a run early stopping ended: count patience afresh
        state["callbacks"].get("EarlyStopping", {})["wait"] = 0
    heads = output_keys(cfg.data.heads)  # head name -> output key, for the curves
    _recover(run_dir, state, heads)
    _set_precision(cfg)

    # Data: read, check every image and region, split by image, decode once.
    resume_maps = load_label_maps(run_dir / "labels.json") if state else None
    resume_split = read_split(run_dir / "split.csv") if state else None
    multiworker = cfg.train.distribute == "multiworker"
    kw = dict(workers=cfg.train.workers, use_multiprocessing=cfg.train.use_multiprocessing, seed=cfg.train.seed,
              replicas=strategy.num_replicas_in_sync, shard=cluster.worker_shard(strategy) if multiworker else (0, 1))
    select = functools.partial(_worker_rows, replicas=kw["replicas"], shard=kw["shard"], seed=kw["seed"])
    data = prepare(cfg, resume_maps, resume_split, log=log, frame=frame, select=select if multiworker else None)
    totals = None
    if multiworker:  # each worker decoded its own images: every one stops alike on a bad image anywhere
        totals = cluster.sum_over_workers(strategy, [len(data.store.bad_images), len(data.problems)])
        if totals[0] and not data.store.bad_images and not cfg.data.skip_bad_images:
            raise ImageError(f"{totals[0]} image(s) of other workers cannot be read (their output lists them) -- "
                             f"fix them, or pass --skip-bad-images on every worker. Received: {totals[0]} bad image(s)")
    _check_images(cfg, data, log)
    _write_data_artefacts(cfg, data, run_dir, log, totals)

    # the class weights count the regions trained on; a worker of a cluster knows only its own croppable
    # ones, so there every labelled region counts (the same weights on every worker)
    weights = (balanced_class_weights(data.split("train"), data.label_maps, None if multiworker else data.store.has)
               if cfg.train.class_weight == "balanced" else None)
    train_seq = CropSequence(data.split("train"), data.label_maps, cfg.train.batch_size, cfg.crop, cfg.augment,
                             store=data.store, class_weights=weights, **kw)
    val_frame = data.split("val")
    val_seq = CropSequence(val_frame, data.label_maps, cfg.train.batch_size, cfg.crop, False,
                           store=data.store, **kw) if len(val_frame) else None
    if val_seq is not None and len(val_seq) == 0:
        val_seq = None
    if strategy.num_replicas_in_sync > 1:
        where = f"; this is worker {kw['shard'][0]} of {kw['shard'][1]}" if multiworker else ""
        log(f"Distributed training: {strategy.num_replicas_in_sync} replicas ({type(strategy).__name__}{where}).")
    log(f"Training on {len(train_seq.slots)} regions, validating on "
        f"{len(val_seq.slots) if val_seq else 0}; {data.store.describe()}.")

    with strategy.scope():
        if state:
            model = keras.models.load_model(run_dir / CHECKPOINTS / state["checkpoint"])
            log(f"Resuming {run_dir} after epoch {state['epoch']} of {cfg.train.epochs}.")
        else:
            keras.utils.set_random_seed(cfg.train.seed)  # weights; data randomness has its own RNGs
            num = {h: len(m) for h, m in data.label_maps.items()}
            model = build_model(cfg.model, cfg.crop.image_size, num, cfg.train.seed)
    if multiworker:
        cluster.fix_keras_fit(model, strategy)
    initial_epoch = state["epoch"] if state else 0
    log(_describe_recipe(cfg))
    monitor = "val_loss" if val_seq is not None else "loss"
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5, patience=cfg.train.reduce_lr, verbose=1)
        if cfg.train.schedule == "plateau" else
        keras.callbacks.LearningRateScheduler(lambda epoch, rate: learning_rate_at(cfg, epoch)),
        # a frozen trunk's epochs are a warm-up: early stopping counts from the first fine-tuning epoch
        *([keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.train.early_stopping, verbose=1,
                                         start_from_epoch=_first_epoch_of(cfg, "finetune"))]
          if cfg.train.early_stopping else []),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
        StallNotice(monitor, state["history"] if state else None, log=lambda text: log("\n" + text)),
    ]
    run_state = RunState(run_dir, monitor, heads, state, callbacks, cfg.train.epochs)
    callbacks.append(run_state)
    train_data, val_data = train_seq, val_seq
    if multiworker:  # each worker feeds its own share of every global batch (see `_worker_dataset`)
        train_data = _worker_dataset(train_seq, strategy)
        val_data = _worker_dataset(val_seq, strategy) if val_seq is not None else None
        callbacks.insert(0, _FollowEpochs(train_seq))
    artifacts.write_json(run_dir / "status.json", {"state": "running", "since": time.time()})
    # The stage (what learns, at which rate) is a function of the epoch alone: one `fit` per stage, and
    # a stage change (also when resuming at the boundary) recompiles, which gives a fresh optimizer; a
    # checkpoint taken inside a stage keeps that stage's trainable flags and optimizer state.
    current = stage(cfg, initial_epoch - 1) if state else None
    try:
        for start, end in stage_spans(cfg, initial_epoch, initial_epoch + left):
            if stage(cfg, start) != current:
                with strategy.scope():
                    apply_stage(model, cfg, stage(cfg, start))
                current = stage(cfg, start)
                if start > 0 or stage(cfg, start) != "scratch":
                    log(f"Epoch {start + 1}: {_describe_stage(cfg, model, current)}")
            train_seq.set_epoch(start)
            model.fit(train_data, validation_data=val_data, epochs=end, initial_epoch=start,
                      shuffle=False, callbacks=callbacks, verbose=1 if os.environ.get("CROPCLF_QUIET") is None else 2)
            if run_state.state["stopped"]:
                break
    except KeyboardInterrupt:
        artifacts.write_json(run_dir / "status.json", {"state": "interrupted", "at": time.time(),
                                                       "resume": "run the same command again"})
        log(f"Interrupted: {run_dir} keeps its last completed epoch; run the same command to resume.")
        raise
    except Exception as e:
        error = _batch_error(e, train_seq, val_seq)
        if multiworker and isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError)):
            artifacts.write_json(run_dir / "status.json", {"state": "interrupted", "at": time.time(),
                                                           "resume": "run the same command on every host"})
            raise cluster.lost_peer(error, run_dir if chief else None) from e
        if not isinstance(error, CropclfError):  # a bug: keep its traceback with the run
            _save_traceback(error, run_dir / "error.txt")
        if error is e:
            raise
        raise error.with_traceback(error.__traceback__) from error.__cause__  # a worker's traceback
    finally:
        for seq in (train_seq, val_seq):
            if seq is not None:
                seq.close()  # workers first: they read the store
        data.store.close()
    if not (run_dir / "model.keras").exists():
        raise CropclfError(f"Training produced no model in {run_dir} (loss was not finite?). Received: no checkpoint")
    if export and chief:
        from cropclf.serving.export import export_run

        export_run(run_dir, log=log)
    artifacts.write_json(run_dir / "status.json", {"state": "complete", "at": time.time()})
    return run_dir


def _first_epoch_of(cfg: Config, name: str) -> int:
    return cfg.train.freeze_epochs if name == "finetune" and cfg.model.weights is not None else 0


def _describe_recipe(cfg: Config) -> str:
    size = "x".join(map(str, cfg.crop.image_size))
    weights = cfg.model.weights
    source = {None: "random initial weights", "imagenet": "ImageNet weights"}.get(weights, f"weights from {weights}")
    text = f"Trunk: {cfg.model.backbone} with {source}, {size} px crops"
    if cfg.train.schedule == "cosine":
        text += f"; cosine learning rate after {cfg.train.warmup_epochs} warm-up epoch(s)"
    else:
        text += f"; learning rate halved after {cfg.train.reduce_lr} epochs without improvement"
    text += (f"; early stopping after {cfg.train.early_stopping} epochs without improvement"
             if cfg.train.early_stopping else "; every epoch of the budget (no early stopping)")
    text += ", the best epoch kept"
    if cfg.train.weight_decay or cfg.train.label_smoothing:
        text += (f"; {'AdamW' if cfg.train.weight_decay else 'Adam'} (weight decay {cfg.train.weight_decay:g}), "
                 f"label smoothing {cfg.train.label_smoothing:g}")
    if weights is None:
        return text + "."
    unfreeze = "all" if cfg.train.unfreeze == "all" else f"the top {cfg.train.unfreeze:.0%}"
    return (text + f"; epochs 1-{cfg.train.freeze_epochs}: heads only (trunk frozen), then {unfreeze} of the "
            f"trunk's layers at learning rate x{cfg.train.finetune_lr_factor:g} (BatchNorm frozen).")


def _describe_stage(cfg: Config, model: keras.Model, name: str) -> str:
    layers = trunk_layers(model)
    learning = sum(1 for layer in layers if layer.trainable_weights)
    rate = cfg.train.learning_rate * (cfg.train.finetune_lr_factor if name == "finetune" else 1)
    return {"frozen": "trunk frozen, training the heads", "finetune": "fine-tuning the trunk's top layers",
            "scratch": "training everything"}[name] + f" ({learning} of {len(layers)} trunk layers learn, " \
        f"learning rate {rate:g})."


CHECKPOINTS = "checkpoints"
STATE_FORMAT = 2

# Settings a resumed (or extended) run may change: they change how long it runs, or how batches are
# loaded, never what a batch holds (batches depend on (seed, epoch, batch) alone, whatever the workers).
RESUMABLE_CHANGES = ("train.epochs", "train.workers", "train.use_multiprocessing", "train.peer_timeout",
                     "data.cache_memory_mb", "data.cache_dir")


class RunState(keras.callbacks.Callback):
    """Commits each epoch end in one step, so that a run killed at any instant resumes exactly.

    An epoch end first writes the model (weights and optimizer state) to
    ``checkpoints/epoch-NNNN.keras`` (under a temporary name, then renamed), then writes
    ``state.json`` under a temporary name and renames it into place: **that rename is the commit**.
    ``state.json`` holds the epoch count, the history, the counters of early stopping and LR
    reduction, the dropout layers' RNG states (which the ``.keras`` file leaves out) and the names
    of the last and the best checkpoints. Only then are ``model.keras`` (the best checkpoint),
    ``history.*`` and ``curves.png`` published from it and the checkpoints it no longer names
    removed (`publish`). A resume starts from the committed state alone: it redoes the publishing,
    and whatever an uncommitted epoch left behind is ignored and removed.
    """

    def __init__(self, run_dir: Path, monitor: str, heads, state: dict | None, callbacks, epochs: int):
        super().__init__()
        self.run_dir, self.monitor, self.heads, self.epochs = run_dir, monitor, heads, int(epochs)
        self.state = state or {"format": STATE_FORMAT, "epoch": 0, "epochs": self.epochs, "checkpoint": None,
                               "best": None, "best_checkpoint": None, "stopped": False, "history": {},
                               "callbacks": {}, "rng": []}
        self.others = [c for c in callbacks if isinstance(c, (keras.callbacks.EarlyStopping,
                                                               keras.callbacks.ReduceLROnPlateau))]

    def on_train_begin(self, logs=None):
        for c in self.others:  # runs after their own on_train_begin reset
            for key, value in self.state["callbacks"].get(type(c).__name__, {}).items():
                setattr(c, key, value)
        if self.state["rng"]:
            _set_rng_states(self.model, self.state["rng"])

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        state = json.loads(json.dumps(self.state))  # a copy: nothing changes until the commit
        for k, v in logs.items():
            state["history"].setdefault(k, []).append(v)
        name = f"epoch-{epoch + 1:04d}.keras"
        with artifacts.atomic_file(self.run_dir / CHECKPOINTS / name, suffix=".keras") as tmp:
            self.model.save(tmp)
        value = logs.get(self.monitor)
        improved = value is not None and np.isfinite(value) and (state["best"] is None or value < state["best"])
        if improved:
            state["best"], state["best_checkpoint"] = value, name
        state.update(epoch=epoch + 1, epochs=self.epochs, checkpoint=name, stopped=bool(self.model.stop_training),
                     callbacks={type(c).__name__: _counters(c) for c in self.others},
                     rng=_rng_states(self.model))
        artifacts.write_json(self.run_dir / "state.json", state)  # the commit point
        self.state = state
        publish(self.run_dir, state, self.heads, model=improved)


def committed_state(run_dir: Path) -> dict | None:
    """The state of the last committed epoch, or None (no epoch committed yet)."""
    state = _read_json(run_dir / "state.json")
    if state is None:
        return None
    if state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{run_dir} was trained by an older cropclf whose checkpoints cannot be resumed "
                          f"exactly; pass --overwrite to start over, or another --out. "
                          f"Received: {run_dir / 'state.json'} without format {STATE_FORMAT}")
    if not (run_dir / CHECKPOINTS / state["checkpoint"]).is_file():
        raise CropclfError(f"{run_dir}: state.json names the checkpoint {state['checkpoint']}, which is gone; "
                           f"the run directory was changed by hand. Pass --overwrite to start over. "
                           f"Received: {sorted(p.name for p in (run_dir / CHECKPOINTS).glob('*'))}")
    return state


def publish(run_dir: Path, state: dict, heads, model: bool = True) -> None:
    """Makes the published artefacts agree with the committed ``state``; idempotent.

    ``model.keras`` becomes the best checkpoint (when ``model``), ``history.*`` and ``curves.png``
    show the committed history, and checkpoints, temporary files and an uncommitted epoch's
    files are removed.
    """
    if model and state["best_checkpoint"]:
        artifacts.publish_copy(run_dir / CHECKPOINTS / state["best_checkpoint"], run_dir / "model.keras")
    history = state["history"]
    artifacts.write_text(run_dir / "history.csv", pd.DataFrame(history).rename_axis("epoch")
                         .rename(index=lambda i: i + 1).to_csv())
    artifacts.write_json(run_dir / "history.json", history)
    learning_curves(history, heads, run_dir / "curves.png")
    keep = {state["checkpoint"], state["best_checkpoint"]}
    for path in sorted((run_dir / CHECKPOINTS).glob("*")):
        if path.name not in keep and path.is_file():
            artifacts.remove(path)
    artifacts.remove_temporaries(run_dir)


def _recover(run_dir: Path, state: dict | None, heads) -> None:
    """Brings the run directory back to its committed state after a kill at any instant."""
    if state is not None:
        publish(run_dir, state, heads)
        return
    for path in (run_dir / CHECKPOINTS).glob("*"):  # no epoch committed: whatever is here is not one
        if path.is_file():
            artifacts.remove(path)
    artifacts.remove_temporaries(run_dir)


def _counters(callback) -> dict:
    """What early stopping and LR reduction carry from epoch to epoch."""
    keys = ("wait", "best", "cooldown_counter", "best_epoch")
    return {k: (None if getattr(callback, k) is None else float(getattr(callback, k)))
            for k in keys if hasattr(callback, k)}


def _rng_states(model) -> list:
    """The dropout layers' seed states: a ``.keras`` file keeps weights and optimizer, not these."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in model.variables if v.name == "seed_generator_state"]


def _set_rng_states(model, states: list) -> None:
    variables = [v for v in model.variables if v.name == "seed_generator_state"]
    if len(variables) != len(states):
        raise RuntimeError(f"the model has {len(variables)} RNG states, the checkpoint {len(states)}")
    for v, value in zip(variables, states):
        v.assign(np.asarray(value, dtype=v.dtype))


def _epochs_left(state: dict | None, cfg: Config) -> int:
    """Epochs still to train: none once early stopping ended the run, unless ``--epochs`` grew."""
    if state is None:
        return cfg.train.epochs
    if state["stopped"] and cfg.train.epochs <= state["epochs"]:
        return 0
    return max(cfg.train.epochs - state["epoch"], 0)


def _check_same_run(saved: Config, cfg: Config, run_dir: Path) -> None:
    """Refuses to resume a run under settings that would change what it computes."""
    same = {key: _setting(cfg, key) for key in RESUMABLE_CHANGES}
    if saved.replace(**same) == cfg:
        return
    old, new = _flat(saved.to_dict()), _flat(cfg.to_dict())
    diffs = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]
    raise ConfigError(f"{run_dir} holds a run with a different config; use the same settings to resume "
                      f"(only {', '.join(RESUMABLE_CHANGES)} may change), --overwrite to start over, or "
                      f"another --out. Received: {'; '.join(diffs[:5])}")


def _setting(cfg: Config, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _flat(d: dict) -> dict:
    return {f"{section}.{k}": v for section, values in d.items() for k, v in values.items()}


class StallNotice(keras.callbacks.Callback):
    """Says after each epoch that did not improve the monitored loss since when, so a run that is not
    learning shows itself while it trains: ``Epoch 7: val_loss 0.6990 has not improved since epoch 2
    (best 0.6931)``.

    Args:
        monitor: the loss early stopping watches.
        history: the history so far of a resumed run (its best epoch counts), else None.
        log: receives each line (training prefixes a newline to end Keras' progress-bar line first,
            as Keras' own callbacks do).
    """

    def __init__(self, monitor: str, history: dict | None = None, log=print):
        super().__init__()
        self.monitor, self.log = monitor, log
        past = enumerate((history or {}).get(monitor, []))
        finite = [(v, e + 1) for e, v in past if np.isfinite(v)]
        self.best, self.best_epoch = min(finite) if finite else (np.inf, 0)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if value < self.best:
            self.best, self.best_epoch = float(value), epoch + 1
        else:
            self.log(f"Epoch {epoch + 1}: {self.monitor} {value:.4f} has not improved since epoch "
                     f"{self.best_epoch} (best {self.best:.4f})")


def _batch_error(error: BaseException, *sequences) -> BaseException:
    """The error a sequence raised while building a batch, if ``error`` is TensorFlow's wrapping of it.

    ``fit`` reads batches through ``tf.data.Dataset.from_generator``, which turns any exception
    (a `CropclfError` naming images and rows included) into a `tf.errors.OpError` holding its text.
    """
    if isinstance(error, tf.errors.OpError):
        for seq in sequences:
            if seq is not None and seq.failure is not None:
                return seq.failure
    return error


def _save_traceback(error: BaseException, path: Path) -> None:
    import traceback

    try:
        artifacts.write_text(path, "".join(traceback.format_exception(error)))
        error.add_note(f"(traceback saved to {path})")
    except OSError:  # the run directory may be what failed; the traceback is still printed
        pass


def _check_images(cfg: Config, data: Prepared, log) -> None:
    bad = data.store.bad_images
    if bad and not cfg.data.skip_bad_images:
        rows: dict[str, list[str]] = {}
        for p in data.problems:
            rows.setdefault(p.file, []).append(p.row)
        lines = [f"{message} (annotations {', '.join(rows.get(path, [])[:5]) or 'n/a'})"
                 for path, message in list(bad.items())[:20]]
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise ImageError(f"{len(bad)} image(s) cannot be read{more}: " + " | ".join(lines)
                         + " -- fix them, or pass --skip-bad-images to leave their regions out")
    if data.problems:
        log(f"{len(data.problems)} region(s) left out before training (listed in data_report.json):")
        print_problems(data.problems, log, limit=10)


def _write_data_artefacts(cfg: Config, data: Prepared, run_dir: Path, log, totals=None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(run_dir / "config.json", cfg.to_json() + "\n")
    artifacts.write_text(run_dir / "labels.json", label_maps_to_json(data.label_maps) + "\n")
    split = pd.DataFrame(sorted(data.assignment.items()), columns=["path", "split"])
    artifacts.write_text(run_dir / "split.csv", split.to_csv(index=False))
    report = {
        "annotations": data.frame.attrs.get("source"), "format": data.frame.attrs.get("format"),
        "images": len(data.frame.attrs.get("images", [])), "regions": int(len(data.frame)),
        "duplicates_dropped": int(data.frame.attrs.get("duplicates_dropped", 0)),
        "undefined_values": int(data.frame.attrs.get("undefined_values", 0)),
        "bad_image_count": len(data.store.bad_images), "bad_images": data.store.bad_images,
        "regions_left_out_count": len(data.problems),
        "regions_left_out": [{"path": p.file, "row": p.row, "reason": p.reason} for p in data.problems],
        "split_notes": data.notes,
    }
    if totals is not None:  # a cluster: each worker decoded its own share; the lists above are this worker's
        report["all_workers"] = {"bad_image_count": int(totals[0]), "regions_left_out_count": int(totals[1])}
    artifacts.write_json(run_dir / "data_report.json", report)
    for note in data.notes:
        log(f"split: {note}")


def _worker_rows(frame: pd.DataFrame, assignment: dict, replicas: int, shard: tuple[int, int], seed: int):
    """The rows worker ``shard`` decodes: its replicas' regions of the train and validation splits."""
    split = frame["path"].map(assignment).to_numpy()
    rows = np.zeros(len(frame), bool)
    for name in ("train", "val"):
        part = split == name
        rows[part] = owned_rows(frame[part], replicas, shard, seed)
    return rows


def _worker_dataset(seq: CropSequence, strategy):
    """This worker's share of every global batch, given to Keras already distributed.

    Keras would hand a `PyDataset` to ``experimental_distribute_dataset``, which under
    `MultiWorkerMirroredStrategy` fails (and would have every worker build every batch). Here the
    sequence (sharded: ``CropSequence(shard=...)``) builds only this worker's regions, and
    ``distribute_datasets_from_function`` with auto-sharding off feeds them as they are: one element
    per local replica and step.
    """
    h, w = seq.crop.image_size
    spec = [tf.TensorSpec((None, h, w, 3), tf.float32),
            {seq.keys[k]: tf.TensorSpec((None, len(seq.label_maps[k])), tf.float32) for k in seq.heads}]
    if seq.weights is not None:
        spec.append({seq.keys[k]: tf.TensorSpec((None,), tf.float32) for k in seq.heads})
    local = max(strategy.num_replicas_in_sync // seq.shard[1], 1)

    def batches():
        for i in range(len(seq)):
            yield seq[i]

    def dataset_fn(context):
        ds = tf.data.Dataset.from_generator(batches, output_signature=tuple(spec))
        if local > 1:  # the worker's batch holds its replicas' equal parts, in replica order
            ds = ds.flat_map(lambda *b: tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(
                lambda t: tf.reshape(t, tf.concat([[local, -1], tf.shape(t)[1:]], 0)), b)))
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(seq) * local))
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    return strategy.distribute_datasets_from_function(dataset_fn)


class _FollowEpochs(keras.callbacks.Callback):
    """Numbers a sharded sequence's epochs as `fit` numbers a `PyDataset`'s (which counts them itself).

    Keras calls a `PyDataset`'s ``on_epoch_end`` once before training and after every epoch, so its
    epoch ``e`` (0-based, as Keras counts) is built as the sequence's epoch ``e + 1``; a dataset
    given to Keras already distributed gets no such calls.
    """

    def __init__(self, seq: CropSequence):
        super().__init__()
        self.seq = seq

    def on_epoch_begin(self, epoch, logs=None):
        self.seq.set_epoch(epoch + 1)


def _strategy(cfg: Config):
    if cfg.train.distribute == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if cfg.train.distribute == "multiworker":
        cluster.read_tf_config()  # a missing or malformed TF_CONFIG: one line that names it
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
        cluster.report_connected()
        return strategy
    return tf.distribute.get_strategy()


def _set_precision(cfg: Config) -> None:
    mode = cfg.train.mixed_precision
    on = mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
