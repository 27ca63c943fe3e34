"""From a config to regions, label maps and splits: the part train, evaluate and inspect share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cropclf.via import read_annotations
from cropclf.config import Config
from cropclf.crops import jitter_reach
from cropclf.labels import LabelMap, build_label_maps, head_column
from cropclf.patches import PatchStore, default_threads
from cropclf.splits import split_by_image


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
    n_dup = int(frame["duplicate"].sum()) if "duplicate" in frame else 0
    if n_dup:
        log(f"{n_dup} duplicate region(s) (same image, shape and labels as an earlier one) left out.")
        frame = frame[~frame["duplicate"]]
        frame.attrs["duplicates_dropped"] = n_dup
    if frame.attrs.get("undefined_values"):
        log(f"{frame.attrs['undefined_values']} value(s) written as `undefined` by VIA read as empty.")
    return frame


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
            progress: bool = True, frame: pd.DataFrame | None = None) -> Prepared:
    """Reads (unless given ``frame``), checks, splits and decodes the data once."""
    frame = load_frame(cfg, log) if frame is None else frame
    maps = label_maps or build_label_maps(frame, cfg.data.heads)
    notes = []
    if assignment is None:
        assignment, notes = split_by_image(frame, cfg.data.heads, cfg.data.split, cfg.train.seed)
    # Only training regions are jittered: the others' patches need no room beyond the margin window
    # (validation crops are then canonical_crop's whatever the store, the memory is smaller).
    aug = cfg.augment
    training = frame["path"].map(assignment).eq("train").to_numpy()
    reach = np.where(training, jitter_reach(aug.shift, aug.scale), 0.0) if aug.enabled else 0.0
    store = PatchStore(frame, cfg.crop.image_size, cfg.crop.margin, reach, cfg.crop.resize, cfg.crop.min_size,
                       cfg.crop.pad_value, memory_mb=cfg.data.cache_memory_mb, cache_dir=cfg.data.cache_dir,
                       threads=default_threads(), progress=progress)
    return Prepared(frame, maps, assignment, notes, store, list(store.problems))


def print_problems(problems, log=print, limit: int = 50) -> None:
    for p in problems[:limit]:
        log(f"  skipped: {p}")
    if len(problems) > limit:
        log(f"  ... and {len(problems) - limit} more (all listed in the run's data_report.json)")
