"""From a config or a run directory to regions, label maps, splits, patches and the model: the one way
train, evaluate, export, review and inspect get their data.

A run directory (`training.train`) holds ``config.json``, ``labels.json``, ``split.csv`` and
``model.keras``; `load_run` reads it, `read_split` reads its split, `build_store` decodes the patches
for a config, `drop_duplicates` is where exact duplicate regions leave.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cropclf.via import read_annotations
from cropclf.config import Config
from cropclf.data.crops import jitter_reach
from cropclf.data.labels import LabelMap, build_label_maps, head_column, load_label_maps
from cropclf.data.patches import PatchStore, default_threads
from cropclf.data.splits import split_by_image


def annotations_path(cfg: Config, log=print) -> Path:
    """The annotation file to read: the user's, or the demo dataset (generated on first use)."""
    if cfg.data.annotations:
        return Path(cfg.data.annotations)
    from cropclf.demo import make_demo_dataset

    log(f"No --annotations given: using the demo dataset in {cfg.data.demo_dir} (made on first use).")
    return make_demo_dataset(cfg.data.demo_dir, n_images=cfg.data.demo_images, seed=0)


def load_frame(cfg: Config, log=print) -> pd.DataFrame:
    """Reads the annotations named by the config and drops exact duplicate regions (counted)."""
    path = annotations_path(cfg, log)
    frame = read_annotations(path, image_root=cfg.data.images, allow_outside_root=cfg.data.allow_outside_root)
    if len(frame) == 0:
        from cropclf.errors import AnnotationError

        raise AnnotationError(f"{path}: no regions to train on; annotate some in VIA and export again. "
                              f"Received: {len(frame.attrs.get('images', []))} image(s), 0 regions")
    for head in cfg.data.heads:
        head_column(frame, head)  # a missing head is an error before anything else happens
    frame = drop_duplicates(frame, log)
    if frame.attrs.get("undefined_values"):
        log(f"{frame.attrs['undefined_values']} value(s) written as `undefined` by VIA read as empty.")
    return frame


def drop_duplicates(frame: pd.DataFrame, log=print) -> pd.DataFrame:
    """Leaves out regions the reader flagged ``duplicate`` (same image, shape and labels as an earlier
    one), counted in ``attrs["duplicates_dropped"]``."""
    n_dup = int(frame["duplicate"].sum()) if "duplicate" in frame else 0
    if n_dup:
        log(f"{n_dup} duplicate region(s) (same image, shape and labels as an earlier one) left out.")
        frame = frame[~frame["duplicate"]]
        frame.attrs["duplicates_dropped"] = n_dup
    return frame


def build_store(cfg: Config, frame: pd.DataFrame, assignment: dict | None = None, progress: bool = True) -> PatchStore:
    """The `PatchStore` of ``frame``'s regions for ``cfg``: the one place a store is built from a config.

    Only regions of images ``assignment`` puts in ``train`` are jittered, so only their patches get room
    for it (the others' crops are then `canonical_crop`'s, whatever the store, and memory is smaller).
    """
    aug = cfg.augment
    if assignment is not None and aug.enabled:
        training = frame["path"].map(assignment).eq("train").to_numpy()
        reach = np.where(training, jitter_reach(aug.shift, aug.scale), 0.0)
    else:
        reach = 0.0
    return PatchStore(frame, cfg.crop.image_size, cfg.crop.margin, reach, cfg.crop.resize, cfg.crop.min_size,
                      cfg.crop.pad_value, memory_mb=cfg.data.cache_memory_mb, cache_dir=cfg.data.cache_dir,
                      threads=default_threads(), progress=progress)


def read_split(path) -> dict[str, str]:
    """A run's ``split.csv``: image path -> ``train``, ``val`` or ``test``."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return dict(zip(table["path"], table["split"]))


class Run:
    """A run directory of `training.train`: its config, label maps, split and model, each read once."""

    def __init__(self, run_dir):
        from cropclf.errors import CropclfError

        self.dir = Path(run_dir)
        if not (self.dir / "config.json").is_file():
            raise CropclfError(f"{self.dir} holds no config.json: is it a run directory of scripts/train.py? "
                               f"Received: --run {self.dir}")
        self.config = Config.from_file(self.dir / "config.json")

    @functools.cached_property
    def label_maps(self) -> dict[str, LabelMap]:
        return load_label_maps(self.dir / "labels.json")

    @functools.cached_property
    def split(self) -> dict[str, str]:
        return read_split(self.dir / "split.csv")

    def load_model(self):
        """``model.keras`` (imports Keras)."""
        import keras

        return keras.models.load_model(self.dir / "model.keras")


@dataclass
class Prepared:
    """Everything a run needs from the data, computed once."""

    frame: pd.DataFrame
    label_maps: dict[str, LabelMap]
    assignment: dict[str, str]
    notes: list[str]
    store: PatchStore
    problems: list = field(default_factory=list)

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["path"].map(self.assignment) == name]


def prepare(cfg: Config, label_maps: dict[str, LabelMap] | None = None, assignment=None, log=print,
            progress: bool = True, frame: pd.DataFrame | None = None, select=None) -> Prepared:
    """Reads (unless given ``frame``), checks, splits and decodes the data once.

    ``select(frame, assignment)``: a boolean mask of the rows to decode (a worker of a cluster decodes
    only its own); label maps and split still come from every row, so every worker agrees on them.
    """
    frame = load_frame(cfg, log) if frame is None else frame
    maps = label_maps or build_label_maps(frame, cfg.data.heads)
    notes = []
    if assignment is None:
        assignment, notes = split_by_image(frame, cfg.data.heads, cfg.data.split, cfg.train.seed)
    decoded = frame if select is None else frame[select(frame, assignment)]
    store = build_store(cfg, decoded, assignment, progress)
    return Prepared(frame, maps, assignment, notes, store, list(store.problems))


def print_problems(problems, log=print, limit: int = 50) -> None:
    for p in problems[:limit]:
        log(f"  skipped: {p}")
    if len(problems) > limit:
        log(f"  ... and {len(problems) - limit} more (all listed in the run's data_report.json)")
