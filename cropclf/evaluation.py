"""Scoring a run: per-head accuracy, macro-F1, per-class precision/recall/F1, confusion matrices."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd

from cropclf import artifacts
from cropclf.annotations import read_annotations
from cropclf.config import Config
from cropclf.dataset import load_frame
from cropclf.labels import encode_heads, load_label_maps
from cropclf.patches import PatchStore, default_threads
from cropclf.plots import confusion_matrix, contact_sheet
from cropclf.sequence import CropSequence


def evaluate_run(run_dir, annotations=None, images=None, split: str = "test", out_dir=None, log=print) -> dict:
    """Scores ``run_dir/model.keras`` on the run's own split, or on another annotation file.

    Regions whose label training never saw are counted and listed in the report, not scored.
    """
    run_dir = Path(run_dir)
    cfg = Config.from_file(run_dir / "config.json")
    maps = load_label_maps(run_dir / "labels.json")
    if annotations:
        frame = read_annotations(annotations, image_root=images, allow_outside_root=cfg.data.allow_outside_root)
        frame = frame[~frame["duplicate"]] if "duplicate" in frame else frame
        source = str(annotations)
    else:
        frame = load_frame(cfg, log=lambda *a: None)
        assignment = dict(pd.read_csv(run_dir / "split.csv", dtype=str, keep_default_na=False).values)
        frame = frame[frame["path"].map(assignment) == split]
        source = f"{cfg.data.annotations or 'demo dataset'} ({split} split)"
    out_dir = Path(out_dir) if out_dir else run_dir / ("evaluation" if not annotations else
                                                       f"evaluation_{Path(annotations).stem}")
    ids = encode_heads(frame, maps, unknown="mark")
    unseen = {h: sorted(set(frame.loc[ids[h] == -2, _column(frame, h)].astype(str))) for h in maps}
    known = np.all([ids[h] != -2 for h in maps], axis=0) if len(frame) else np.zeros(0, bool)
    n_unseen = int((~known).sum())
    for h, values in unseen.items():
        if values:
            log(f"head '{h}': {int((ids[h] == -2).sum())} region(s) carry labels training never saw, "
                f"reported, not scored: {values}")

    store = PatchStore(frame[known], cfg.crop.image_size, cfg.crop.margin, cfg.crop.margin, cfg.crop.resize,
                       cfg.crop.min_size, cfg.crop.pad_value, memory_mb=cfg.augment.cache_memory_mb,
                       threads=default_threads())
    seq = CropSequence(frame[known], maps, cfg.train.batch_size, cfg.crop, False, store=store)
    if len(seq.slots) == 0:
        from cropclf.errors import CropclfError

        raise CropclfError(f"{source}: no region can be scored. Received: {len(frame)} regions, "
                           f"{len(seq.skipped)} left out, {n_unseen} with unseen labels")
    model = keras.models.load_model(run_dir / "model.keras")
    probs = model.predict(seq, verbose=1)
    report = {"run": str(run_dir), "data": source, "regions_scored": int(len(seq.slots)),
              "regions_left_out": [str(p) for p in seq.skipped], "regions_with_unseen_labels": n_unseen,
              "unseen_labels": unseen, "heads": {}}
    correct_all = np.ones(len(seq.slots), bool)
    with artifacts.atomic_dir(out_dir) as tmp:
        worst = []
        for h, m in maps.items():
            p = np.asarray(probs[seq.keys[h]])
            y_true, y_pred = seq.labels[h], p.argmax(axis=1)
            correct_all &= y_true == y_pred
            report["heads"][h] = head_metrics(y_true, y_pred, m.classes)
            confusion_matrix(np.array(report["heads"][h]["confusion"]), m.classes, tmp / f"confusion_{seq.keys[h]}.png",
                             f"{h}: accuracy {report['heads'][h]['accuracy']:.3f}")
            worst.append(1 - p[np.arange(len(y_true)), y_true])
        report["both_right"] = float(correct_all.mean()) if len(maps) > 1 else None
        if (run_dir / "saved_model" / "saved_model.pb").exists():
            report["serving_agreement"] = serving_agreement(run_dir / "saved_model", frame, seq, probs, maps)
        _worst_sheet(seq, maps, probs, np.max(worst, axis=0), ~correct_all, tmp / "worst.png")
        artifacts.write_json(tmp / "report.json", report)
        artifacts.write_text(tmp / "report.txt", format_report(report))
    log(format_report(report))
    log(f"Wrote {out_dir}/report.json, report.txt, confusion_*.png and worst.png")
    return report


def serving_agreement(saved_model, frame, seq: CropSequence, probs, maps) -> dict:
    """How often the SavedModel's in-graph crop (``classify_regions``) gives the Keras model's label."""
    import tensorflow as tf

    from cropclf.images import load_image

    classify = tf.saved_model.load(str(saved_model)).signatures["classify_regions"]
    position = {label: k for k, label in enumerate(seq.index)}
    same = {h: np.zeros(len(seq.index), bool) for h in maps}
    worst = dict.fromkeys(maps, 0.0)
    used = frame.loc[seq.index]
    for path, group in used.groupby("path", sort=False):
        boxes = group[["x", "y", "width", "height"]].to_numpy(np.float32)
        out = classify(image=tf.constant(load_image(path)), boxes=tf.constant(boxes))
        pos = [position[label] for label in group.index]
        for h in maps:
            key = seq.keys[h]
            served, local = out[f"{key}_probabilities"].numpy(), np.asarray(probs[key])[pos]
            same[h][pos] = served.argmax(1) == local.argmax(1)
            worst[h] = max(worst[h], float(np.abs(served - local).max()))
    return {h: {"same_label": float(same[h].mean()), "max_probability_difference": worst[h]} for h in maps}


def head_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    k = len(classes)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
    }


def format_report(report: dict) -> str:
    lines = [f"Evaluation of {report['run']} on {report['data']}: {report['regions_scored']} regions scored, "
             f"{len(report['regions_left_out'])} left out, {report['regions_with_unseen_labels']} with unseen labels"]
    for h, r in report["heads"].items():
        lines.append(f"\nhead '{h}': accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}")
        lines.append(f"  {'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
        for c, m in r["per_class"].items():
            lines.append(f"  {c[:24]:<24}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>9d}")
    if report.get("both_right") is not None:
        lines.append(f"\nall heads right together: {report['both_right']:.4f}")
    for h, a in report.get("serving_agreement", {}).items():
        lines.append(f"SavedModel classify_regions vs Keras model, head '{h}': same label on "
                     f"{a['same_label']:.4f} of regions, largest probability difference "
                     f"{a['max_probability_difference']:.4f}")
    return "\n".join(lines)


def _worst_sheet(seq: CropSequence, maps, probs, badness: np.ndarray, wrong: np.ndarray, path,
                 count: int = 32) -> None:
    order = np.argsort(-badness)
    order = order[wrong[order]][:count]  # misclassified on some head, least probable true label first
    crops = seq.crops(order) if len(order) else []
    captions = []
    for k in order:
        lines = []
        for h, m in maps.items():
            p = np.asarray(probs[seq.keys[h]])[k]
            t, q = seq.labels[h][k], int(p.argmax())
            lines.append(f"{h}: {m.classes[t]}" + ("" if t == q else f" -> {m.classes[q]}!"))
        captions.append(lines)
    contact_sheet([c.astype(np.uint8) for c in crops], captions, path,
                  title=f"{len(order)} of {int(wrong.sum())} misclassified crops, worst first "
                        "(true -> predicted!)")


def _column(frame, head):
    from cropclf.labels import head_column

    return head_column(frame, head)
