"""`CropSequence`: batches of region crops for Keras, every region exactly once per epoch.

Each batch is ``(X, {key: one_hot})`` (optionally with per-head sample weights): ``X`` is float32
``[batch, height, width, 3]`` in the 0..255 range (the model scales pixels itself), the targets are
float32 one-hot arrays (and the weights) keyed by each head's output key (`output_keys`), the
model's output names; ``labels`` and ``weights`` on the sequence stay keyed by head name.

Randomness derives from ``(seed, epoch, batch index)`` alone, never from call order, so batches are
the same whatever the number of workers, threads or processes, and the extra ``__getitem__`` calls
Keras makes before training change nothing.
"""

from __future__ import annotations

import copy
import math
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cropclf.augment import build_augmentation  # noqa: E402
from cropclf.config import AugmentConfig, CropConfig  # noqa: E402
from cropclf.crops import fit_size, jitter_reach, jitter_window, letterbox, output_to_source  # noqa: E402
from cropclf.errors import CropclfError  # noqa: E402
from cropclf.labels import LabelMap, encode_heads, output_keys  # noqa: E402
from cropclf.patches import PatchStore, Problem, default_threads  # noqa: E402


class CropSequence(keras.utils.PyDataset):
    """Crops, augments and batches the regions of an annotation frame.

    Args:
        frame: regions (`read_annotations` output, or a split of it).
        label_maps: head name -> `LabelMap`, built once from the whole dataset.
        batch_size: regions per batch; the last batch is short, never dropped.
        crop: crop settings (output size, margin, resize mode, padding).
        augment: ``False``/``None`` for evaluation, ``True`` for the default training augmentation,
            an `AugmentConfig`, or your own ``albumentations.Compose`` (box jitter then uses the
            default `AugmentConfig`'s shift and scale).
        shuffle: reshuffle every epoch (default: when augmenting).
        seed: base of every random draw.
        store: a `PatchStore` shared with other splits; built from ``frame`` when omitted.
        class_weights: head -> per-class weights; batches then carry per-head sample weights.
        replicas: pad each batch to a multiple of this many replicas (a `tf.distribute` strategy
            splits batches evenly); the padding repeats regions with sample weight 0, so they add
            nothing to the loss (at most ``replicas - 1`` of them enter the unweighted accuracy of
            an epoch), and every batch then carries sample weights.
        decode_threads: threads for the one decoding pass that fills a store built here
            (default: one per CPU core, whatever ``workers`` is).
        progress: show a bar while decoding images into the store.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for `keras.utils.PyDataset`.
    """

    def __init__(self, frame: pd.DataFrame, label_maps: dict[str, LabelMap], batch_size: int = 32,
                 crop: CropConfig | None = None, augment=False, shuffle: bool | None = None, seed: int = 0,
                 store: PatchStore | None = None, class_weights: dict | None = None, replicas: int = 1,
                 decode_threads: int | None = None, progress: bool = True, **kwargs):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise CropclfError(f"`batch_size` must be >= 1. Received: {batch_size}")
        self.crop = crop or CropConfig()
        self.label_maps, self.batch_size, self.seed = label_maps, int(batch_size), int(seed)
        self.heads = list(label_maps)
        self.keys = output_keys(self.heads)  # batches are keyed by output key: head names may hold anything
        self._compose = None
        if augment is True:
            augment = AugmentConfig()
        if isinstance(augment, AugmentConfig):
            self.jitter = augment if augment.enabled else None
        elif augment:
            self.jitter, self._compose = AugmentConfig(), augment
        else:
            self.jitter = None
        self.augment_cfg = augment if isinstance(augment, AugmentConfig) else None
        self.shuffle = bool(self.jitter) if shuffle is None else shuffle
        if store is None:
            reach = jitter_reach(self.jitter.shift, self.jitter.scale) if self.jitter else 0.0
            store = PatchStore(frame, self.crop.image_size, self.crop.margin, reach, self.crop.resize,
                               self.crop.min_size, self.crop.pad_value, threads=decode_threads or default_threads(),
                               progress=progress)
        self.store = store

        # Which regions take part: croppable, and labelled for every head.
        labels = encode_heads(frame, label_maps)
        labelled = np.all([labels[h] >= 0 for h in self.heads], axis=0) if len(frame) else np.zeros(0, bool)
        croppable = np.array([store.has(label) for label in frame.index], bool)
        self.skipped: list[Problem] = store.problems_for(frame.index)
        for k in np.flatnonzero(croppable & ~labelled):
            missing = [h for h in self.heads if labels[h][k] < 0]
            self.skipped.append(Problem(str(frame["path"].iloc[k]), str(frame["row"].iloc[k]),
                                        f"unlabelled for head(s) {missing}", frame.index[k]))
        use = croppable & labelled
        self.index = frame.index[use]
        self.slots = np.array([store.slot[label] for label in self.index], np.int64)
        self.labels = {h: labels[h][use] for h in self.heads}
        self.paths = frame["path"].to_numpy()[use]
        self.rows = frame["row"].to_numpy()[use] if "row" in frame else np.array([""] * use.sum())
        self.weights, self.replicas = None, max(int(replicas), 1)
        if class_weights:
            self.weights = {h: np.asarray(class_weights[h], np.float32)[self.labels[h]] for h in self.heads}
        elif self.replicas > 1:
            self.weights = {h: np.ones(len(self.slots), np.float32) for h in self.heads}
        self._eye = {h: np.eye(len(m), dtype=np.float32) for h, m in label_maps.items()}
        self.epoch = 0
        self._order = (None, None)  # (epoch, permutation): one permutation per epoch, not per batch

    # --- the PyDataset contract ---------------------------------------------------------------

    def __len__(self) -> int:
        return math.ceil(len(self.slots) / self.batch_size)

    def on_epoch_end(self):
        # Keras calls this once before training and once after each epoch; the count is the epoch.
        self.epoch += 1

    def set_epoch(self, epochs_done: int) -> None:
        """Continues the epoch count after ``epochs_done`` epochs (for resumed training)."""
        self.epoch = int(epochs_done)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Positions of this epoch's regions, in batch order."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(len(self.slots))
        cached_epoch, cached = self._order  # one read: threads may replace the pair meanwhile
        if cached_epoch != epoch:
            # derived from (seed, epoch) alone, so threads racing here, or processes each holding their
            # own copy, compute the same array; the pair is replaced in one assignment
            cached = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.slots))
            cached.setflags(write=False)
            self._order = (epoch, cached)
        return cached

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"Batch index {i} out of range for {len(self)} batches. Received: {i}")
        epoch = self.epoch
        positions = self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        try:
            X = self.crops(positions, epoch, i)
        except Exception as e:  # name the batch's regions: workers lose the traceback's context
            raise CropclfError(f"Building batch {i} (epoch {epoch}) failed: {e!r}; regions: "
                               + "; ".join(f"{self.paths[p]} ({self.rows[p]})" for p in positions[:8])) from e
        y = {self.keys[h]: self._eye[h][self.labels[h][positions]] for h in self.heads}
        if self.weights is None:
            return X, y
        w = {self.keys[h]: self.weights[h][positions] for h in self.heads}
        short = -len(positions) % self.replicas
        if short:  # repeat regions to fill the replicas, with weight 0 in the loss
            take = np.resize(np.arange(len(positions)), short)
            X = np.concatenate([X, X[take]])
            y = {h: np.concatenate([v, v[take]]) for h, v in y.items()}
            w = {h: np.concatenate([v, np.zeros(short, np.float32)]) for h, v in w.items()}
        return X, y, w

    # --- crops ---------------------------------------------------------------------------------

    def crops(self, positions, epoch: int = 0, batch: int = 0) -> np.ndarray:
        """The ``[n, h, w, 3]`` float32 crops of the regions at ``positions``."""
        oh, ow = self.crop.image_size
        X = np.empty((len(positions), oh, ow, 3), np.uint8)
        rng = np.random.default_rng([self.seed, 2, epoch, batch]) if self.jitter else None
        aug = self._augmentation(int(rng.integers(2**31))) if rng is not None else None
        # no jitter: the margin window is whole patch pixels, resized as canonical_crop resizes it
        jitter = rng is not None and (self.jitter.shift > 0 or self.jitter.scale > 0)
        for k, p in enumerate(positions):
            s = self.slots[p]
            X[k] = self._jittered(s, rng) if jitter else self.store.canonical(s)
            if aug is not None:
                X[k] = aug(image=X[k])["image"]
        return X.astype(np.float32)

    def _jittered(self, s: int, rng: np.random.Generator) -> np.ndarray:
        oh, ow = self.crop.image_size
        window = jitter_window(self.store.margin_boxes[s], rng, self.jitter.shift, self.jitter.scale)
        th, tw = fit_size((window[3], window[2]), (oh, ow), self.crop.resize)
        M = output_to_source(self.store.to_patch(s, window), (th, tw), "stretch")
        # the patch reaches as far as the jitter can (PatchStore's reach): the border mode only fills
        # the half pixel an enlarging warp samples beyond the window's edge, as resize does
        crop = cv2.warpAffine(self.store.patch(s), M, (tw, th), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
        return letterbox(crop, (oh, ow), self.crop.pad_value)

    def _augmentation(self, seed: int):
        if self._compose is not None:  # a private copy: Compose objects are not thread-safe
            aug = copy.deepcopy(self._compose)
            aug.set_random_seed(seed)
            return aug
        return build_augmentation(self.augment_cfg or AugmentConfig(), seed=seed)

    def report(self) -> str:
        """One line per region left out, and a count."""
        lines = [str(p) for p in self.skipped]
        return "\n".join([f"{len(self.skipped)} region(s) left out, {len(self.slots)} used", *lines])
