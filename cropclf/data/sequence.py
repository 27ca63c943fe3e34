"""`CropSequence`: batches of region crops for Keras, every region exactly once per epoch.

Each batch is ``(X, {key: one_hot})`` (optionally with per-head sample weights): ``X`` is float32
``[batch, height, width, 3]`` in the 0..255 range (the model scales pixels itself), the targets are
float32 one-hot arrays (and the weights) keyed by each head's output key (`output_keys`), the
model's output names; ``labels`` and ``weights`` on the sequence stay keyed by head name.

Randomness derives from ``(seed, epoch, batch index)`` alone, never from call order, so batches are
the same whatever the number of workers, threads or processes, and the extra ``__getitem__`` calls
Keras makes before training change nothing. The sequence runs its own workers (`_Loader`), which hand
out a batch only for the ``(epoch, index)`` it was built for.
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import threading
from concurrent.futures import CancelledError, ProcessPoolExecutor, ThreadPoolExecutor


import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cropclf.data.augment import build_augmentation  # noqa: E402
from cropclf.config import AugmentConfig, CropConfig  # noqa: E402
from cropclf.data.crops import (Problem, fit_size, jitter_reach, jitter_window, keep_border, letterbox,  # noqa: E402
                                output_to_source)
from cropclf.errors import CropclfError  # noqa: E402
from cropclf.data.labels import LabelMap, encode_heads, output_keys  # noqa: E402
from cropclf.data.patches import PatchStore, default_threads  # noqa: E402


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
        replicas: the replicas of a `tf.distribute` strategy, which splits each batch evenly among
            them. With more than one, every region belongs to one replica for the whole run
            (`replica_owners`: whole images where the balance allows), and each batch is the
            replicas' equal parts of ``ceil(batch_size / replicas)`` regions, each drawn from its
            replica's own regions (reshuffled every epoch) and augmented from its own random stream,
            so a part is the same whichever process builds it. A part short of regions is padded
            with its own regions at sample weight 0, so they add nothing to the loss (they do enter
            the unweighted accuracy), and every batch then carries sample weights.
        shard: ``(index, count)``: this process is worker ``index`` of ``count`` (multi-worker
            training, ``replicas`` counting every worker's replicas): it builds only its replicas'
            parts, from only its replicas' regions: ``frame`` may hold every region (and ``store``
            only this worker's; see `owned_rows`), and no region of another worker is ever decoded,
            cropped or augmented here.
        decode_threads: threads for the one decoding pass that fills a store built here
            (default: one per CPU core, whatever ``workers`` is).
        progress: show a bar while decoding images into the store.
        workers: threads (or processes) building batches ahead of ``fit``.
        use_multiprocessing: build batches in forked processes instead of threads.
        max_queue_size: how many batches to build ahead.

    The workers are the sequence's own, not Keras': Keras' loader hands out batches in the order they
    arrive and keeps unconsumed ones across epochs, so under a `tf.distribute` strategy (which pulls a
    batch to build the model) every epoch began with the previous epoch's batches. Here a batch is
    only ever handed out for the ``(epoch, index)`` it was built for; Keras sees one worker.
    """

    def __init__(self, frame: pd.DataFrame, label_maps: dict[str, LabelMap], batch_size: int = 32,
                 crop: CropConfig | None = None, augment=False, shuffle: bool | None = None, seed: int = 0,
                 store: PatchStore | None = None, class_weights: dict | None = None, replicas: int = 1,
                 decode_threads: int | None = None, progress: bool = True, workers: int = 1,
                 use_multiprocessing: bool = False, max_queue_size: int = 10, shard: tuple[int, int] = (0, 1)):
        super().__init__()  # Keras' own loader stays off: see `_Loader`
        self._loader = _Loader(self, workers, use_multiprocessing, max_queue_size)
        self.failure: BaseException | None = None  # the first error building a batch (`fit` wraps it)
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
        self.replicas, self.shard = max(int(replicas), 1), (int(shard[0]), int(shard[1]))
        if not 0 <= self.shard[0] < self.shard[1] or self.replicas % self.shard[1]:
            raise ValueError(f"shard {shard} does not divide {self.replicas} replicas among its workers")
        local = self.replicas // self.shard[1]
        self.my_replicas = range(self.shard[0] * local, (self.shard[0] + 1) * local)
        owners = replica_owners(frame, self.replicas, self.seed)
        owned = np.isin(owners, self.my_replicas)
        mine = frame if owned.all() else frame[owned]
        if store is None:
            reach = jitter_reach(self.jitter.shift, self.jitter.scale) if self.jitter else 0.0
            store = PatchStore(mine, self.crop.image_size, self.crop.margin, reach, self.crop.resize,
                               self.crop.min_size, self.crop.pad_value, threads=decode_threads or default_threads(),
                               progress=progress)
        self.store = store

        # Which regions take part: this worker's, croppable, and labelled for every head.
        labels = encode_heads(frame, label_maps)
        labelled = np.all([labels[h] >= 0 for h in self.heads], axis=0) if len(frame) else np.zeros(0, bool)
        # every worker counts every replica's labelled regions alike (from the frame, before decoding): the
        # number of steps, which all workers must agree on, follows from the largest count
        self._part = -(-self.batch_size // self.replicas)
        self._counts = np.bincount(owners[labelled], minlength=self.replicas)
        croppable = owned & np.array([store.has(label) for label in frame.index], bool)
        self.skipped: list[Problem] = store.problems_for(mine.index)
        for k in np.flatnonzero(croppable & ~labelled):
            missing = [h for h in self.heads if labels[h][k] < 0]
            self.skipped.append(Problem(str(frame["path"].iloc[k]), str(frame["row"].iloc[k]),
                                        f"unlabelled for head(s) {missing}", "unlabelled", frame.index[k]))
        use = croppable & labelled
        self.index = frame.index[use]
        self.slots = np.array([store.slot[label] for label in self.index], np.int64)
        self.labels = {h: labels[h][use] for h in self.heads}
        self.paths = frame["path"].to_numpy()[use]
        self.rows = frame["row"].to_numpy()[use] if "row" in frame else np.array([""] * use.sum())
        self.owner = owners[use]  # the replica each region belongs to
        self.weights = None
        if class_weights:
            self.weights = {h: np.asarray(class_weights[h], np.float32)[self.labels[h]] for h in self.heads}
        elif self.replicas > 1:
            self.weights = {h: np.ones(len(self.slots), np.float32) for h in self.heads}
        self._eye = {h: np.eye(len(m), dtype=np.float32) for h, m in label_maps.items()}
        self.epoch = 0
        self._order = (None, None)  # (epoch, permutation): one permutation per epoch, not per batch
        self._replica_orders = (None, None)  # (epoch, {replica: positions}), likewise

    # --- the PyDataset contract ---------------------------------------------------------------

    def __len__(self) -> int:
        if self.replicas > 1:
            return math.ceil(int(self._counts.max()) / self._part)
        return math.ceil(len(self.slots) / self.batch_size)

    def on_epoch_end(self):
        # Keras calls this once before training and once after each epoch; the count is the epoch.
        self.epoch += 1

    def set_epoch(self, epochs_done: int) -> None:
        """Continues the epoch count after ``epochs_done`` epochs (for resumed training)."""
        self.epoch = int(epochs_done)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Positions of this epoch's regions (this worker's), in the order batches hold them."""
        epoch = self.epoch if epoch is None else epoch
        cached_epoch, cached = self._order  # one read: threads may replace the pair meanwhile
        if cached_epoch != epoch:
            # derived from (seed, epoch) alone, so threads racing here, or processes each holding their
            # own copy, compute the same array; the pair is replaced in one assignment
            if self.replicas > 1:
                cached = np.concatenate([np.concatenate(self.parts(epoch, i)) for i in range(len(self))] or
                                        [np.zeros(0, np.int64)])
            elif self.shuffle:
                cached = np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.slots))
            else:
                cached = np.arange(len(self.slots))
            cached.setflags(write=False)
            self._order = (epoch, cached)
        return cached

    def parts(self, epoch: int, i: int) -> list[np.ndarray]:
        """Positions of the regions each of this worker's replicas gets at step ``i`` (without padding)."""
        cached_epoch, orders = self._replica_orders
        if cached_epoch != epoch:
            orders = {}
            for r in self.my_replicas:
                own = np.flatnonzero(self.owner == r)
                orders[r] = (np.random.default_rng([self.seed, 1, epoch, r]).permutation(own) if self.shuffle
                             else own)
            self._replica_orders = (epoch, orders)
        return [orders[r][i * self._part:(i + 1) * self._part] for r in self.my_replicas]

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"Batch index {i} out of range for {len(self)} batches. Received: {i}")
        epoch = self.epoch if self.shuffle or self.jitter is not None else 0  # else every epoch is alike
        try:
            return self._loader.get(epoch, i)
        except Exception as e:
            # `fit` reads batches through `tf.data`, which turns any exception into a TensorFlow error;
            # training re-raises this one instead (see `cropclf.training`)
            if self.failure is None and not isinstance(e, CancelledError):  # cancelled: a reader fit dropped
                self.failure = e
            raise

    def batch(self, epoch: int, i: int):
        """Batch ``i`` of epoch ``epoch``: a pure function of the two (whoever calls it, in any order)."""
        if self.replicas > 1:
            return self._replica_parts(epoch, i)
        positions = self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        X = self._crops_of_batch(positions, epoch, i)
        y = {self.keys[h]: self._eye[h][self.labels[h][positions]] for h in self.heads}
        if self.weights is None:
            return X, y
        return X, y, {self.keys[h]: self.weights[h][positions] for h in self.heads}

    def _replica_parts(self, epoch: int, i: int):
        """This worker's replicas' parts of global batch ``i``, each padded to the step's part size.

        Every replica's part at a step has the same size (all workers derive it from the replicas'
        region counts): ``ceil(batch_size / replicas)``, less on the last steps. A part short of regions
        repeats its own (or, with none left this epoch, its replica's first ones) at weight 0; a
        replica without any region takes this worker's others, else blank crops: a worker never
        builds another worker's region.
        """
        size = min(self._part, int(self._counts.max()) - i * self._part)
        worker_regions = np.flatnonzero(np.isin(self.owner, self.my_replicas))
        Xs, labels, weights = [], [], []
        for r, part in zip(self.my_replicas, self.parts(epoch, i)):
            weight = np.ones(size, np.float32)
            weight[len(part):] = 0
            if len(part):
                X = self._crops_of_batch(part, epoch, i, r)
                take = np.resize(np.arange(len(part)), size)  # the part, then its first regions again
                X, part = X[take], part[take]
            elif len(worker_regions):
                own = self.parts(epoch, 0)[r - self.my_replicas.start]
                part = np.resize(own if len(own) else worker_regions, size)
                X = self._crops_of_batch(part, epoch, i, r)
            else:
                X = np.full((size, *self.crop.image_size, 3), self.crop.pad_value, np.float32)
                part = None
            Xs.append(X)
            labels.append(part)
            weights.append({h: weight * (self.weights[h][part] if part is not None else 0) for h in self.heads})
        y = {self.keys[h]: np.concatenate([self._eye[h][self.labels[h][p] if p is not None else np.zeros(size, int)]
                                           for p in labels]) for h in self.heads}
        w = {self.keys[h]: np.concatenate([pw[h] for pw in weights]) for h in self.heads}
        return np.concatenate(Xs), y, w

    def _crops_of_batch(self, positions, epoch: int, i: int, part: int | None = None) -> np.ndarray:
        try:
            return self.crops(positions, epoch, i, part)
        except CropclfError as e:  # a data problem: say which regions (a worker's traceback says nothing)
            regions = "; ".join(f"{self.paths[p]} ({self.rows[p]})" for p in positions[:8])
            more = f" and {len(positions) - 8} more" if len(positions) > 8 else ""
            raise type(e)(f"{regions}{more}: building batch {i} of epoch {epoch}: {e}") from e

    def close(self) -> None:
        """Stops the workers (before the patch store they read from closes)."""
        self._loader.close()

    # --- crops ---------------------------------------------------------------------------------

    def crops(self, positions, epoch: int = 0, batch: int = 0, part: int | None = None) -> np.ndarray:
        """The ``[n, h, w, 3]`` float32 crops of the regions at ``positions`` (``part``: a replica's part)."""
        oh, ow = self.crop.image_size
        X = np.empty((len(positions), oh, ow, 3), np.float32)  # filled by casting each uint8 crop: one pass
        stream = [self.seed, 2, epoch, batch] + ([] if part is None else [part])
        rng = np.random.default_rng(stream) if self.jitter else None
        aug = self._augmentation(int(rng.integers(2**31))) if rng is not None else None
        # no jitter: the margin window is whole patch pixels, resized as canonical_crop resizes it
        jitter = rng is not None and (self.jitter.shift > 0 or self.jitter.scale > 0)
        for k, p in enumerate(positions):
            s = self.slots[p]
            crop = self._jittered(s, rng) if jitter else self.store.canonical(s)  # may be a view of the store
            # augmented crops stay uint8 images (albumentations keeps the dtype; a custom pipeline's float
            # output is cast as it was into the uint8 batch before)
            X[k] = aug(image=np.array(crop))["image"].astype(np.uint8, copy=False) if aug is not None else crop
        return X

    def _jittered(self, s: int, rng: np.random.Generator) -> np.ndarray:
        oh, ow = self.crop.image_size
        window = jitter_window(self.store.margin_boxes[s], rng, self.jitter.shift, self.jitter.scale)
        if self.jitter.keep_border:
            window = keep_border(window, self.store.margin_boxes[s], self.store.image_hw[s])
        th, tw = fit_size((window[3], window[2]), (oh, ow), self.crop.resize)
        M = output_to_source(self.store.to_patch(s, window), (th, tw))
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


def replica_owners(frame: pd.DataFrame, replicas: int, seed: int) -> np.ndarray:
    """The replica (``0 .. replicas - 1``) each region of ``frame`` belongs to, for the whole run.

    The images, in an order drawn from ``seed``, lay their regions end to end, and the line is cut into
    ``replicas`` runs as equal as whole regions allow: a replica's regions are whole images (save at
    most ``replicas - 1`` images a cut falls inside), drawn at random rather than by name, so a
    replica's share is not one class, which its BatchNorm batch statistics would feel. A worker
    decodes only its replicas' images. A pure function of the frame: every worker computes the same.
    """
    n = len(frame)
    if replicas <= 1 or n == 0:
        return np.zeros(n, np.int64)
    codes, images = pd.factorize(frame["path"], sort=True)
    rank = np.random.default_rng([seed, 3]).permutation(len(images))[codes]  # each row's image's place
    line = np.lexsort((np.arange(n), rank))  # rows by (image's place, row)
    owners = np.empty(n, np.int64)
    owners[line] = np.arange(n) * replicas // n
    return owners


def owned_rows(frame: pd.DataFrame, replicas: int, shard: tuple[int, int], seed: int) -> np.ndarray:
    """Which rows of ``frame`` worker ``shard = (index, count)``'s sequences of ``frame`` use (all for one worker)."""
    local = replicas // shard[1]
    return np.isin(replica_owners(frame, replicas, seed), range(shard[0] * local, (shard[0] + 1) * local))


class _Loader:
    """Builds a sequence's batches ahead of the caller on worker threads or forked processes.

    Batches are keyed by ``(epoch, index)``: a request gets the batch built for exactly that key,
    batches built ahead for another epoch are dropped, and extra or abandoned readers (Keras' model
    building, `tf.data` iterators it discards) cannot shift what the next reader gets.
    """

    def __init__(self, seq: CropSequence, workers: int, processes: bool, depth: int):
        self.seq, self.workers, self.processes = seq, max(int(workers), 1), bool(processes)
        self.depth = max(int(depth), 1)
        self._pool = None
        self._pending: dict = {}
        self._lock = threading.Lock()

    def get(self, epoch: int, i: int):
        if self.workers == 1 and not self.processes:
            return self.seq.batch(epoch, i)
        with self._lock:
            if self._pool is None:
                self._pool = (ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"),
                                                  initializer=_adopt, initargs=(self.seq,))
                              if self.processes else ThreadPoolExecutor(self.workers, "cropclf-batches"))
            stale = [k for k in self._pending if k[0] != epoch or (len(self._pending) > 4 * self.depth and k[1] < i)]
            for key in stale:
                self._pending.pop(key).cancel()
            for j in range(i, min(i + self.depth, len(self.seq))):
                if (epoch, j) not in self._pending:
                    self._pending[epoch, j] = (self._pool.submit(_build, epoch, j) if self.processes
                                               else self._pool.submit(self.seq.batch, epoch, j))
            future = self._pending.pop((epoch, i))
        return future.result()

    def close(self) -> None:
        with self._lock:
            pool, self._pool, self._pending = self._pool, None, {}
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


_WORKER_SEQUENCE: CropSequence | None = None  # in a forked worker: the sequence it builds batches of


def _adopt(seq: CropSequence) -> None:
    global _WORKER_SEQUENCE
    _WORKER_SEQUENCE = seq


def _build(epoch: int, i: int):
    return _WORKER_SEQUENCE.batch(epoch, i)
