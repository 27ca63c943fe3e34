"""PNGs a person would rather look at than read: learning curves, confusion matrices, contact sheets."""

from __future__ import annotations

import cv2
import matplotlib
import numpy as np

from cropclf.artifacts import atomic_file

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(history: dict, heads: dict[str, str], path) -> None:
    """One column per head (loss above, accuracy below), training and validation.

    ``heads``: head name -> output key (`cropclf.labels.output_keys`): the history is keyed by key,
    the titles show the head's own name.
    """
    fig, axes = plt.subplots(2, len(heads), figsize=(5 * len(heads), 7), squeeze=False)
    epochs = np.arange(1, len(next(iter(history.values()), [])) + 1)
    for col, (head, key) in enumerate(heads.items()):
        for row, metric in enumerate(("loss", "accuracy")):
            ax = axes[row, col]
            for prefix, style in (("", "-"), ("val_", "--")):
                column = f"{prefix}{key}_{metric}"
                if column in history:
                    ax.plot(epochs, history[column], style, marker="o", ms=3, label="validation" if prefix else "train")
            ax.set_title(f"{head}: {metric}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    _save(fig, path)


def confusion_matrix(matrix: np.ndarray, classes, path, title: str) -> None:
    """Row-normalised colours with raw counts written in each cell; rows are the true labels."""
    n = len(classes)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def contact_sheet(crops, captions, path, columns: int = 8, scale: int = 2, title: str = "") -> None:
    """A grid of RGB crops, each with up to two caption lines under it (OpenCV, no figure overhead)."""
    if len(crops) == 0:
        crops, captions = [np.zeros((32, 32, 3), np.uint8)], [("(nothing to show)",)]
    h, w = crops[0].shape[:2]
    cw, ch = max(w * scale, 140), h * scale
    lines = max(len(c) if isinstance(c, (list, tuple)) else 1 for c in captions)
    cell_h = ch + 14 * lines + 6
    rows = -(-len(crops) // columns)
    top = 24 if title else 0
    sheet = np.full((top + rows * cell_h, columns * cw, 3), 255, np.uint8)
    if title:
        cv2.putText(sheet, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (crop, caption) in enumerate(zip(crops, captions)):
        r, c = divmod(k, columns)
        y, x = top + r * cell_h, c * cw
        big = cv2.resize(np.asarray(crop, np.uint8), (w * scale, ch), interpolation=cv2.INTER_NEAREST)
        sheet[y:y + ch, x + (cw - w * scale) // 2:x + (cw - w * scale) // 2 + w * scale] = big
        for i, line in enumerate(caption if isinstance(caption, (list, tuple)) else [caption]):
            color = (200, 0, 0) if str(line).startswith("pred") and "!" in str(line) else (0, 0, 0)
            cv2.putText(sheet, _ascii(str(line))[:24], (x + 3, y + ch + 13 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX,
                        0.38, color, 1, cv2.LINE_AA)
    with atomic_file(path, suffix=".png") as tmp:
        cv2.imwrite(str(tmp), sheet[..., ::-1])


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; keep other characters visible as '?'.
    return text.encode("ascii", "replace").decode("ascii")


def _save(fig, path) -> None:
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
