"""Classifies regions with an exported SavedModel alone.

    classifier = Classifier("runs/demo/saved_model")
    frame = read_annotations("via.csv")
    predictions, skipped = predict_regions(classifier, frame)
    write_predictions(predictions, "predictions.csv")
    # labels back into the VIA file: cropclf.via.writer.write_via(...)

No Keras and nothing of the training code, so a machine that serves the model needs neither:
importing this module loads OpenCV, Pillow, numpy and pandas; TensorFlow is imported when a
`Classifier` loads its SavedModel (tests/test_predict.py runs scripts/predict.py with Keras made
unimportable). Images are decoded as in training (`load_image`, EXIF applied) and each image's
regions go through the ``classify_regions`` signature in one call. Regions that cannot be classified
(`crops.why_not_croppable` with the model's ``min_size``, as in training; missing or unreadable
images) come back as `crops.Problem` records, never dropped silently.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cropclf import artifacts
from cropclf.config import CropConfig
from cropclf.data.crops import Problem, why_not_croppable
from cropclf.errors import CropclfError, ImageError
from cropclf.data.images import load_image, probe_image
from cropclf.data.labels import output_keys
from cropclf.progress import Progress

COLUMNS = ("filename", "region_id", "row", "x", "y", "width", "height")
BOX = ("x", "y", "width", "height")
PROGRESS_FROM = 10  # images; fewer finish before a progress line would help
_BOX_HELP = "--box takes x,y,width,height in image pixels (4 numbers, width and height >= 0)"


class Classifier:
    """A SavedModel from `cropclf.serving.export`: its heads (from ``metadata()``) and ``classify_regions``.

    Raises:
        CropclfError: ``path`` is not a SavedModel, or not one written by cropclf.
    """

    def __init__(self, path):
        path = Path(path)
        if not (path / "saved_model.pb").is_file():
            raise CropclfError(f"--model must be a SavedModel folder (holding saved_model.pb), "
                               f"as scripts/train.py and scripts/export.py write. "
                               f"Received: --model {path}")
        import tensorflow as tf  # seconds to import: input errors should not wait for it

        try:
            signatures = tf.saved_model.load(str(path)).signatures
        except (OSError, ValueError, tf.errors.OpError) as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise CropclfError(f"{path}: TensorFlow cannot load this SavedModel ({first}). "
                               f"Received: --model {path}") from None
        missing = [s for s in ("classify_regions", "metadata") if s not in signatures]
        meta = {} if missing else {k: v.numpy().decode("utf-8")
                                   for k, v in signatures["metadata"]().items()}
        if missing or not {"labels_json", "preprocessing_json"} <= meta.keys():
            raise CropclfError(f"{path}: not a cropclf SavedModel (it needs the classify_regions "
                               f"and metadata signatures); export it with scripts/export.py. "
                               f"Received: signatures {sorted(signatures)}")
        labels, prep = json.loads(meta["labels_json"]), json.loads(meta["preprocessing_json"])
        self.heads = list(prep.get("heads") or labels)
        self.preprocessing = prep  # crop size, margin, resize mode, padding: to draw its crops
        self.classes = {h: labels[h]["classes"] for h in self.heads}
        self.min_size = float(prep["min_size"]) if "min_size" in prep else _min_size(path)
        self._fn = signatures["classify_regions"]
        # Each head's outputs, from the export's own list (heads_json). Exports older than that list
        # could only hold identifier-like head names (name, type), whose keys `output_keys` gives.
        listed = json.loads(meta["heads_json"]) if "heads_json" in meta else []
        self._keys = {m["head"]: m["key"] for m in listed} or output_keys(self.heads)
        outputs = self._fn.structured_outputs
        lost = [h for h in self.heads if f"{self._keys.get(h)}_label" not in outputs]
        if lost:
            raise CropclfError(f"{path}: no outputs for head(s) {lost} in classify_regions. "
                               f"Received: outputs {sorted(outputs)}")

    def classify(self, image: np.ndarray, boxes, second: bool = False) -> dict[str, tuple]:
        """Per head, labels and scores of ``boxes`` (VIA ``x, y, w, h``) on an RGB uint8 image.

        With ``second``, also the runner-up labels and their scores (the same as the best for a
        one-class head): ``(labels, scores, second_labels, second_scores)``.
        """
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = self._fn(image=np.ascontiguousarray(image, np.uint8), boxes=boxes)
        result = {}
        for h, k in self._keys.items():
            labels, scores = [b.decode("utf-8") for b in out[f"{k}_label"].numpy()], out[f"{k}_score"].numpy()
            result[h] = (labels, scores)
            if second:
                p = out[f"{k}_probabilities"].numpy()
                runner = np.argsort(-p, axis=1, kind="stable")[:, min(1, p.shape[1] - 1)]
                result[h] += ([self.classes[h][j] for j in runner], p[np.arange(len(p)), runner])
        return result



def _min_size(path: Path) -> float:
    """The training config's ``crop.min_size``, for exports older than ``min_size`` in their metadata."""
    default = CropConfig.min_size
    try:
        crop = json.loads((path / "assets.extra" / "config.json").read_text("utf-8"))["crop"]
        return float(crop.get("min_size", default))
    except (OSError, ValueError, KeyError, TypeError):
        return default


# --- regions in ---------------------------------------------------------------------------------

def parse_box(text: str) -> tuple[float, float, float, float]:
    """Parses ``"x,y,w,h"``. Raises `CropclfError` naming the value."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CropclfError(f"{_BOX_HELP}; a value is not a number. "
                           f"Received: --box {text}") from None
    if len(box) != 4:
        raise CropclfError(f"{_BOX_HELP}; found {len(box)} value(s). Received: --box {text}")
    if not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise CropclfError(f"{_BOX_HELP}; width and height must be finite and >= 0. "
                           f"Received: --box {text}")
    return box


def regions_from_boxes(image, boxes: list[str]) -> pd.DataFrame:
    """A frame shaped like `read_annotations`' for ``--box`` texts on one image (checked first)."""
    parsed = [parse_box(b) for b in boxes]
    probe_image(image)  # a missing or broken image is an error here, not a skipped region
    rows = [{"filename": str(image), "path": str(image), "region_id": k, "shape": "rect",
             "x": x, "y": y, "width": w, "height": h, "row": f"--box {k + 1}"}
            for k, (x, y, w, h) in enumerate(parsed)]
    return pd.DataFrame(rows, columns=["filename", "path", "region_id", "shape", "x", "y", "width",
                                       "height", "row"])


# --- prediction ---------------------------------------------------------------------------------

def predict_regions(clf: Classifier, frame: pd.DataFrame, draw_dir=None,
                    progress: bool = True, second: bool = False) -> tuple[pd.DataFrame, list[Problem]]:
    """Classifies every region of ``frame`` (from `read_annotations`), one signature call per image.

    ``draw_dir``: also write each image with its boxes and predicted labels there, as PNG.

    Returns:
        The predictions (index: the frame's, columns `COLUMNS` then per head ``<head>`` and
        ``<head>_score``, with ``second`` also ``<head>_second`` and ``<head>_second_score``, the
        runner-up) and the regions that could not be classified.
    """
    records, index, skipped = [], [], []
    groups = frame.groupby("path", sort=False)
    names: set[str] = set()
    many = progress and groups.ngroups >= PROGRESS_FROM
    with Progress(groups.ngroups, "predict", enabled=many) as bar:
        for path, group in groups:
            rows = group.to_dict("records")
            try:
                image = load_image(path)
            except ImageError as e:
                reason = str(e).split(" Received:")[0].removeprefix(f"{path}: ").rstrip(".")
                skipped += [Problem(r["filename"], r["row"], f"cannot read {path}: {reason}", "unreadable_image",
                                    idx) for idx, r in zip(group.index, rows)]
                bar.update()
                continue
            keep = []
            for idx, r in zip(group.index, rows):
                why = why_not_croppable([r[c] for c in BOX], image.shape[:2], clf.min_size)
                if why:
                    skipped.append(Problem(r["filename"], r["row"], why[1], why[0], idx))
                else:
                    keep.append((idx, r))
            boxes = [[r[c] for c in BOX] for _, r in keep]
            result = clf.classify(image, boxes, second) if keep else {}
            for k, (idx, r) in enumerate(keep):
                record = {c: _plain(r[c]) for c in COLUMNS}
                for h, (labels, scores, *runner) in result.items():
                    record[h], record[f"{h}_score"] = labels[k], round(float(scores[k]), 6)
                    if runner:
                        record[f"{h}_second"] = runner[0][k]
                        record[f"{h}_second_score"] = round(float(runner[1][k]), 6)
                records.append(record)
                index.append(idx)
            if draw_dir is not None:
                draw_path = _unique(Path(draw_dir), Path(path).stem, names)
                drawn = draw_regions(image, boxes, records[len(records) - len(keep):], clf.heads)
                png = cv2.imencode(".png", drawn[..., ::-1])[1]  # RGB -> OpenCV's BGR
                artifacts.write_bytes(draw_path, png.tobytes())
            bar.update()
    extra = ("_second", "_second_score") if second else ()
    columns = [*COLUMNS, *(c for h in clf.heads for c in (h, f"{h}_score", *(h + e for e in extra)))]
    return pd.DataFrame(records, index=index, columns=columns, dtype=object), skipped


def draw_regions(image: np.ndarray, boxes, records, heads) -> np.ndarray:
    """A copy of ``image`` with each box and its predicted labels (and scores) drawn on it."""
    out = image.copy()
    scale = max(0.35, min(image.shape[:2]) / 900)
    thick = max(1, round(scale * 2))
    for (x, y, w, h), record in zip(boxes, records):
        x0, y0, x1, y1 = (int(round(v)) for v in (x, y, x + w, y + h))
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), thick)  # the box is [x, x + w)
        text = " / ".join(f"{record[h]} {record[f'{h}_score']:.2f}" for h in heads)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y0 - base - 2 if y0 - th - base - 2 >= 0 else min(y0, out.shape[0]) + th + 2
        tx = min(max(x0, 0), max(out.shape[1] - tw, 0))
        cv2.rectangle(out, (tx, ty - th - 2), (tx + tw, ty + base), (0, 0, 0), cv2.FILLED)
        cv2.putText(out, text, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def _unique(folder: Path, stem: str, taken: set[str]) -> Path:
    name, k = f"{stem}.png", 1
    while name in taken:
        name, k = f"{stem}_{k}.png", k + 1
    taken.add(name)
    return folder / name


def _plain(value):
    """Numbers as ints where whole (``10`` rather than ``10.0``); anything else unchanged."""
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else float(value)
    return value.item() if isinstance(value, np.generic) else value


def write_predictions(predictions: pd.DataFrame, out=None, fmt: str | None = None) -> str:
    """Writes CSV or JSON (``fmt``, else ``out``'s extension) to ``out`` atomically, or stdout."""
    fmt = fmt or ("json" if out and Path(out).suffix.lower() == ".json" else "csv")
    if fmt == "json":
        text = json.dumps(predictions.to_dict("records"), indent=2, ensure_ascii=False) + "\n"
    else:
        text = predictions.to_csv(index=False, lineterminator="\n")
    if out is None:
        sys.stdout.write(text)
    else:
        artifacts.write_text(out, text)
    return fmt
