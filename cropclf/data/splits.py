"""Train/validation/test splits by image: no image's regions in two splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from cropclf.data.labels import head_column

SPLITS = ("train", "val", "test")


def split_by_image(frame: pd.DataFrame, heads, fractions=(0.7, 0.15, 0.15), seed: int = 0):
    """Assigns every image to one split, seeded, keeping every class present in training.

    Images are shuffled with an owned RNG and cut by the fractions. Then, for any class of any head
    that no training image holds, one image holding it moves from validation/test into training, and
    a training image whose classes all stay covered moves back, to keep the sizes.

    Returns:
        ``(assignment, notes)``: a dict image path -> split name, and human-readable notes on classes
        that could not be kept in training or are missing from validation/test.
    """
    paths = sorted(frame["path"].unique())
    rng = np.random.default_rng([seed, 7])
    order = [paths[i] for i in rng.permutation(len(paths))]
    n = len(order)
    n_val, n_test = int(round(fractions[1] * n)), int(round(fractions[2] * n))
    if n >= 3:
        n_val, n_test = (max(n_val, 1) if fractions[1] > 0 else 0), (max(n_test, 1) if fractions[2] > 0 else 0)
    n_val, n_test = min(n_val, max(n - 1, 0)), min(n_test, max(n - 1 - n_val, 0))
    assignment = {p: "val" for p in order[:n_val]}
    assignment.update({p: "test" for p in order[n_val:n_val + n_test]})
    assignment.update({p: "train" for p in order[n_val + n_test:]})

    classes_of = _classes_per_image(frame, heads)
    notes = []
    for head in heads:
        for label in sorted({lab for c in classes_of.values() for (h, lab) in c if h == head}):
            key = (head, label)
            if any(key in classes_of[p] for p in paths if assignment[p] == "train"):
                continue
            holder = next(p for p in order if key in classes_of[p])
            donor_split = assignment[holder]
            assignment[holder] = "train"
            train_counts = Counter(k for p in paths if assignment[p] == "train" for k in classes_of[p])
            back = next((p for p in reversed(order) if assignment[p] == "train" and p != holder
                         and all(train_counts[k] > 1 for k in classes_of[p])), None)
            if back is not None:
                assignment[back] = donor_split
            notes.append(f"head '{head}': class {label!r} moved into training (image {holder})")
    for head in heads:
        all_labels = {lab for c in classes_of.values() for (h, lab) in c if h == head}
        for split in ("val", "test"):
            have = {lab for p in paths if assignment[p] == split for (h, lab) in classes_of[p] if h == head}
            missing = sorted(all_labels - have)
            if missing and any(v == split for v in assignment.values()):
                notes.append(f"head '{head}': {split} split has no example of {missing} (too few images)")
    return assignment, notes


def _classes_per_image(frame: pd.DataFrame, heads) -> dict[str, set]:
    out: dict[str, set] = {p: set() for p in frame["path"].unique()}
    for head in heads:
        column = head_column(frame, head)
        for path, label in zip(frame["path"], frame[column].astype(str)):
            if label:
                out[path].add((head, label))
    return out


def split_counts(frame: pd.DataFrame, assignment: dict, heads) -> pd.DataFrame:
    """Region counts per split and class, for reports: rows (head, class), columns the splits."""
    split = frame["path"].map(assignment)
    rows = []
    for head in heads:
        column = head_column(frame, head)
        table = pd.crosstab(frame[column].astype(str).replace("", "(unlabelled)"), split)
        for label, counts in table.iterrows():
            rows.append({"head": head, "class": label, **{s: int(counts.get(s, 0)) for s in SPLITS}})
    return pd.DataFrame(rows, columns=["head", "class", *SPLITS])
