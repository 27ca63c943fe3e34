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

    ``heads``: head name -> output key (`cropclf.data.labels.output_keys`): the history is keyed by key,
    the titles show the head's own name.
    """
    fig, axes = plt.subplots(2, len(heads), figsize=(5 * len(heads), 7), squeeze=False)
    epochs = np.arange(1, len(next(iter(history.values()), [])) + 1)
    for col, (head, key) in enumerate(heads.items()):
        for row, metric in enumerate(("loss", "accuracy")):
            ax = axes[row, col]
            for prefix, style in (("", "-"), ("val_", "--")):
                column = f"{prefix}{key}_{metric}"
                if column not in history and len(heads) == 1:
                    column = f"{prefix}{metric}"  # Keras leaves a one-output model's metrics unprefixed
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


MISTAKE = (200, 0, 0)  # RGB: a caption line that reports a wrong prediction
_FONT, _FONT_SCALE, _LINE_H = cv2.FONT_HERSHEY_SIMPLEX, 0.38, 14
_MAX_CELL_W = 360  # px: wider captions wrap onto further lines rather than being cut


def contact_sheet(crops, captions, path, columns: int = 8, scale: int = 2, title: str = "",
                  highlight=None) -> None:
    """A grid of RGB crops with caption lines under each (OpenCV, no figure overhead).

    Args:
        crops: RGB uint8 crops of one size.
        captions: per crop, a list of lines (or one string). Every character is drawn: a cell is
            as wide as its widest line, up to 360 px, and longer lines wrap.
        highlight: per crop, one bool per caption line: True draws the line in `MISTAKE` red.
    """
    if len(crops) == 0:
        crops, captions, highlight = [np.zeros((32, 32, 3), np.uint8)], [["(nothing to show)"]], None
    captions = [[str(c) for c in (cap if isinstance(cap, (list, tuple)) else [cap])] for cap in captions]
    highlight = highlight or [[False] * len(cap) for cap in captions]
    h, w = crops[0].shape[:2]
    text_w = max(_text_width(ascii_text(line)) for cap in captions for line in cap)
    cw, ch = min(max(w * scale, 140, text_w + 6), max(_MAX_CELL_W, w * scale)), h * scale
    cells = [[(piece, mark) for line, mark in zip(cap, marks) for piece in _wrap(ascii_text(line), cw - 6)]
             for cap, marks in zip(captions, highlight)]
    cell_h = ch + _LINE_H * max(len(c) for c in cells) + 6
    columns = min(columns, len(crops))
    rows = -(-len(crops) // columns)
    top = 24 if title else 0
    sheet = np.full((top + rows * cell_h, max(columns * cw, _text_width(title, 0.5) + 8), 3), 255, np.uint8)
    if title:
        cv2.putText(sheet, title, (4, 17), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (crop, cell) in enumerate(zip(crops, cells)):
        r, c = divmod(k, columns)
        y, x = top + r * cell_h, c * cw
        big = cv2.resize(np.asarray(crop, np.uint8), (w * scale, ch), interpolation=cv2.INTER_NEAREST)
        sheet[y:y + ch, x + (cw - w * scale) // 2:x + (cw - w * scale) // 2 + w * scale] = big
        for i, (line, mark) in enumerate(cell):
            cv2.putText(sheet, line, (x + 3, y + ch + 13 + _LINE_H * i), _FONT, _FONT_SCALE,
                        MISTAKE if mark else (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_file(path, suffix=".png") as tmp:
        cv2.imwrite(str(tmp), sheet[..., ::-1])


def _text_width(text: str, scale: float = _FONT_SCALE) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0] if text else 0


def _wrap(text: str, width: int) -> list[str]:
    """Splits ``text`` into pieces no wider than ``width`` px (at spaces where it can), losing nothing."""
    pieces = []
    while _text_width(text) > width:
        n = len(text)
        while n > 1 and _text_width(text[:n]) > width:
            n -= 1
        cut = text.rfind(" ", 0, n) + 1 or n  # after a space, else mid-word
        pieces.append(text[:cut])
        text = text[cut:]
    return pieces + [text]


def ascii_text(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only; other characters stay visible as '?'."""
    return text.encode("ascii", "replace").decode("ascii")


def _save(fig, path) -> None:
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
