"""Label maps: one per head, built once from the whole dataset, saved beside every artefact."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from cropclf.errors import ConfigError, LabelError

KEY_LENGTH = 40  # output keys become file names (confusion_<key>.png) and TF names: keep them short
RESERVED_KEYS = ("image", "trunk")  # the model's input and trunk layers: an output cannot share their names


def output_keys(heads) -> dict[str, str]:
    """Each head's output key: the name of its model output, history columns and SavedModel outputs.

    VIA attribute names can hold anything (``Class Name``, ``2``, ``colour/shade``, ``цвет``), but
    Keras outputs, TensorFlow signature keys and file names need plain ASCII. The rule: the head name
    lower-cased, each run of characters outside ``a-z0-9`` replaced by one ``_``, ``_`` trimmed from
    both ends, cut to 40 characters. Where that is empty, starts with a digit, has the form
    ``head_<n>`` (kept for the fallback), is ``image`` or ``trunk`` (the model's own layers) or is
    already an earlier head's key, the key is ``head_<n>``, n being the head's 1-based position in
    ``heads``. Keys are therefore distinct ``[a-z][a-z0-9_]*`` names; lower case because keys name
    files, and some file systems ignore case. The SavedModel's ``metadata()["heads_json"]`` lists
    each head with its key, so a client never needs to apply this rule itself.

    Args:
        heads: head names in order (``data.heads``, the order of ``labels.json``).

    Returns:
        head name -> output key, in the same order.
    """
    heads = list(heads)
    keys: dict[str, str] = {}
    for n, head in enumerate(heads, 1):
        if not isinstance(head, str) or not head.strip():
            raise ConfigError(f"Head names must be non-blank strings. Received: {heads!r}")
        key = re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_")[:KEY_LENGTH].rstrip("_")
        if not key or key[0].isdigit() or re.fullmatch(r"head_\d+", key) or key in RESERVED_KEYS \
                or key in keys.values():
            key = f"head_{n}"
        keys[head] = key
    return keys


def head_column(frame: pd.DataFrame, head: str) -> str:
    """The frame column holding a head's labels: a region attribute, else a file attribute."""
    for column in (head, f"region:{head}", f"file:{head}"):
        if column in frame.columns and column not in ("filename", "path", "shape", "row"):
            return column
    found = [c for c in frame.attrs.get("region_attributes", []) + frame.attrs.get("file_attributes", [])]
    raise LabelError(f"{frame.attrs.get('source', 'annotations')}: no attribute '{head}' to use as a head; "
                     f"pass --heads with some of {found or 'the attributes (none found)'}. Received: {head!r}")


class LabelMap:
    """Sorted class names of one head <-> integer ids."""

    def __init__(self, head: str, classes, counts=None):
        self.head = head
        self.classes = list(classes)
        self.counts = dict(counts or {})
        self.index = {c: i for i, c in enumerate(self.classes)}
        if len(self.index) != len(self.classes):
            raise LabelError(f"Label map for head '{head}' has duplicate classes. Received: {self.classes}")

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, head: str) -> "LabelMap":
        values = frame[head_column(frame, head)].astype(str)
        counts = Counter(v for v in values if v != "")
        if not counts:
            raise LabelError(f"{frame.attrs.get('source', 'annotations')}: head '{head}' has no labelled "
                             f"region. Received: {len(values)} regions, all unlabelled")
        return cls(head, sorted(counts), counts)

    def encode(self, values, unknown: str = "raise", where=None) -> np.ndarray:
        """Maps labels to ids; ``""`` (unlabelled) gives -1.

        Args:
            values: label strings.
            unknown: ``"raise"`` for a `LabelError` on a label the map lacks, ``"mark"`` to give -2.
            where: optional per-value location strings for the error message.
        """
        out = np.empty(len(values), dtype=np.int64)
        for k, v in enumerate(values):
            if v == "":
                out[k] = -1
            elif v in self.index:
                out[k] = self.index[v]
            elif unknown == "mark":
                out[k] = -2
            else:
                at = f" at {where[k]}" if where is not None else ""
                raise LabelError(f"Head '{self.head}': label {v!r}{at} was never seen in training; known "
                                 f"labels are {self.classes}. Received: {v!r}")
        return out

    def to_dict(self) -> dict:
        return {"head": self.head, "classes": self.classes, "counts": self.counts}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelMap":
        return cls(d["head"], d["classes"], d.get("counts"))


def build_label_maps(frame: pd.DataFrame, heads) -> dict[str, LabelMap]:
    return {head: LabelMap.from_frame(frame, head) for head in heads}


def label_maps_to_json(maps: dict[str, LabelMap]) -> str:
    return json.dumps({h: m.to_dict() for h, m in maps.items()}, indent=2, ensure_ascii=False)


def load_label_maps(path) -> dict[str, LabelMap]:
    """Reads ``labels.json`` as training wrote it; a damaged file is a `LabelError` naming it."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return {h: LabelMap.from_dict(m) for h, m in d.items()}
    except FileNotFoundError:
        raise LabelError(f"{path}: the run's label file is missing; train the run again. "
                         f"Received: {path}") from None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        if isinstance(e, LabelError):
            raise
        raise LabelError(f"{path}: the run's label file is damaged ({type(e).__name__}: {e}); "
                         f"train the run again. Received: {str(e)[:80]}") from None


def balanced_class_weights(frame: pd.DataFrame, maps: dict[str, LabelMap], croppable=None) -> dict[str, np.ndarray]:
    """Per head, ``n / (k * n_c)`` over the regions a `CropSequence` of ``frame`` trains on (labelled for
    every head, and ``croppable(index label)`` when given): rare classes count as much as common ones.
    Classes without a region weigh 1. The run's ``train.class_weight = "balanced"``."""
    labels = encode_heads(frame, maps)
    used = np.all([v >= 0 for v in labels.values()], axis=0) if len(frame) else np.zeros(0, bool)
    if croppable is not None:
        used &= np.array([croppable(i) for i in frame.index], bool)
    out = {}
    for head, ids in labels.items():
        counts = np.bincount(ids[used], minlength=len(maps[head])).astype(np.float64)
        present = counts > 0
        w = np.ones_like(counts)
        w[present] = counts[present].sum() / (present.sum() * counts[present])
        out[head] = w.astype(np.float32)
    return out


def encode_heads(frame: pd.DataFrame, maps: dict[str, LabelMap], unknown: str = "raise") -> dict[str, np.ndarray]:
    """Integer labels per head for every row (-1: unlabelled, -2: unknown when ``unknown="mark"``)."""
    where = [f"{frame.attrs.get('source', '')} {r}".strip() for r in frame["row"]] if "row" in frame else None
    return {h: m.encode(frame[head_column(frame, h)].astype(str).tolist(), unknown, where) for h, m in maps.items()}
