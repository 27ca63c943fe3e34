"""Where a person should look: the least-sure predictions, and the labels that are probably wrong.

    least_sure_sheet(frame, predictions, heads, classifier.preprocessing, "review.png")
    review_run("runs/demo", folds=5)  # runs/demo/review/label_issues.csv, suspects.png, VIA file

Likely label mistakes are found by confident learning (Northcutt, Jiang and Chuang, "Confident
Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, 2021), written here from the paper:
every labelled region gets out-of-sample probabilities by k-fold cross-validation over images (a
model never scores a region it trained on); per head, class j's threshold t_j is the mean
probability of j over the regions labelled j; a region's confident label is the most probable class
among those whose probability reaches their threshold; a region whose confident label is not its
given label is counted in a confident joint; calibrated, it estimates how many regions given each
label are really each other class, and that many regions with the largest margin towards that class
are suspects (pruning by noise rate, the paper's best rule). Suspects are ranked by self-confidence,
the probability of the given label, lowest first. Keras is imported only by the cross-validation,
so `least_sure_sheet` serves from the SavedModel alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cropclf import artifacts
from cropclf.config import Config
from cropclf.data.crops import canonical_crop
from cropclf.errors import CropclfError
from cropclf.data.images import load_image
from cropclf.data.labels import balanced_class_weights, build_label_maps, head_column, output_keys
from cropclf.plots import contact_sheet

SHEET_COUNT = 32  # crops on a contact sheet: a screenful
REVIEW = "review"  # the region attribute that marks a suspect in the VIA file


# --- least sure first (predictions from the SavedModel) ------------------------------------------

def least_sure_sheet(frame: pd.DataFrame, predictions: pd.DataFrame, heads, preprocessing: dict, path,
                     count: int = SHEET_COUNT) -> Path:
    """A contact sheet of the ``count`` least-sure regions (lowest score on any head), with the
    two best labels and their scores per head; ``predictions`` from ``predict_regions(second=True)``.
    """
    score = predictions[[f"{h}_score" for h in heads]].astype(float).min(axis=1) if len(predictions) else []
    chosen = list(pd.Series(score, index=predictions.index).sort_values(kind="stable").index[:count])
    crops, captions, images = {}, {}, {}
    for i in chosen:
        p = frame.at[i, "path"]
        if p not in images:
            images = {p: load_image(p)}  # chosen regions are few: keep one image decoded at a time
        box = [float(frame.at[i, c]) for c in ("x", "y", "width", "height")]
        crops[i] = canonical_crop(images[p], box, tuple(preprocessing["image_size"]), preprocessing["margin"],
                                  preprocessing.get("resize", "stretch"), preprocessing.get("pad_value", 0))
        r = predictions.loc[i]
        captions[i] = [line for h in heads for line in (
            f"{h}: {r[h]} {float(r[f'{h}_score']):.2f}",
            f"  or {r[f'{h}_second']} {float(r[f'{h}_second_score']):.2f}")]
    contact_sheet([crops[i] for i in chosen], [captions[i] for i in chosen], path,
                  title=f"{len(chosen)} least-sure of {len(predictions)} regions, least sure first "
                        "(best label, then runner-up)")
    return Path(path)


# --- confident learning --------------------------------------------------------------------------

def confident_joint(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confident learning's count of (given label, confident label) pairs for one head.

    Class j's threshold t_j is the mean probability of j over the regions labelled j; a region's
    confident label is its most probable class among those reaching their threshold (-1 where none
    does). The counts are calibrated as the paper does: each row scaled to the number of regions given
    that label, rounded keeping the row totals.

    Returns:
        ``(joint, confident)``: the ``[k, k]`` calibrated counts (rows: given, columns: confident) and
        each region's confident label.
    """
    probs, given = np.asarray(probs, np.float64), np.asarray(given, np.int64)
    n, k = probs.shape
    thresholds = np.full(k, np.inf)  # a class nobody labelled is never confidently suggested
    for j in range(k):
        if (given == j).any():
            thresholds[j] = probs[given == j, j].mean()
    above = probs >= thresholds - 1e-6  # the mean itself reaches the threshold despite rounding
    confident = np.where(above.any(axis=1), np.where(above, probs, -1.0).argmax(axis=1), -1)
    counted = confident >= 0
    joint = np.zeros((k, k))
    np.add.at(joint, (given[counted], confident[counted]), 1)
    labelled = np.bincount(given, minlength=k)
    joint[np.diag_indices(k)] = np.maximum(joint.diagonal(), labelled > 0)  # a labelled class keeps one region
    rows = joint.sum(axis=1, keepdims=True)
    return _round_rows(joint / np.maximum(rows, 1e-12) * labelled[:, None]), confident


def _round_rows(counts: np.ndarray) -> np.ndarray:
    """Rounds each row to integers keeping its (rounded) total: largest remainders get the extra ones."""
    floor = np.floor(counts)
    for i, row in enumerate(counts):
        missing = int(round(row.sum() - floor[i].sum()))
        floor[i, np.argsort(floor[i] - row, kind="stable")[:missing]] += 1
    return floor.astype(np.int64)


def confident_learning(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confident learning's suspects for one head, pruned by noise rate (the paper's Cl:PBNR).

    The calibrated confident joint estimates, for each given label i and class j != i, how many
    regions labelled i are really j; among the regions labelled i, that many with the largest margin
    p_j - p_i are suspects. A region whose most probable class is its given label is never a suspect.

    Args:
        probs: ``[n, k]`` out-of-sample probabilities.
        given: ``[n]`` the given class ids.

    Returns:
        ``(suspect, suggested, self_confidence)``: whether each region is a suspect, the class it looks
        like most apart from its given one, and the probability of its given label.
    """
    probs, given = np.asarray(probs, np.float64), np.asarray(given, np.int64)
    n, k = probs.shape
    joint, _ = confident_joint(probs, given)
    suspect = np.zeros(n, bool)
    for i in range(k):
        members = np.flatnonzero(given == i)
        for j in range(k):
            count = min(int(joint[i, j]), len(members) - 1)  # never all of a class
            if j != i and count > 0:
                margin = probs[members, j] - probs[members, i]
                suspect[members[np.argsort(-margin, kind="stable")[:count]]] = True
    suspect &= probs.argmax(axis=1) != given
    others = np.where(np.eye(k, dtype=bool)[given], -1.0, probs)
    return suspect, others.argmax(axis=1), probs[np.arange(n), given]


def top_n_hits(ranked, truth: set, n: int) -> dict:
    """Precision and recall of ``truth`` among the first ``n`` of ``ranked`` (which may be shorter)."""
    top = list(ranked)[:n]
    hits = len(set(top) & truth)
    return {"n": n, "listed": len(top), "hits": hits, "precision": hits / len(top) if top else 0.0,
            "recall": hits / n if n else 1.0}


# --- a run's labelled regions, scored out of sample ----------------------------------------------

def review_run(run_dir, folds: int = 5, out_dir=None, simulate_noise: float | None = None, noise_seed: int = 0,
               baseline: bool = True, epochs: int | None = None, log=print, verbose: int | None = None) -> dict:
    """Finds the labelled regions of a run's data whose label the model finds unlikely.

    Trains ``folds`` models with the run's config (its epochs, unless ``epochs`` is given), each on
    all images but one fold's, and scores the held-out fold: out-of-sample probabilities for every
    region labelled for every head. Writes to ``out_dir`` (default ``RUN/review``):
    ``label_issues.csv`` (ranked, lowest self-confidence first), ``out_of_sample.csv`` (every
    region's probabilities), ``suspects.png`` (the top suspects, given -> suggested) and the
    annotation file again, in its own format, with a ``review`` region attribute on each suspect and
    the images holding suspects first.

    With ``simulate_noise`` (a fraction), first flips that fraction of each head's labels (seeded by
    ``noise_seed``), then measures how many flipped regions the review finds among its top N
    suspects (N: the number flipped), next to ranking by an in-sample model's probability of the
    given label (``baseline``); writes ``measurement.json`` instead of the VIA file (default folder
    ``RUN/review_simulated``).

    Raises:
        CropclfError: ``run_dir`` holds no config.json, or there are fewer images than folds.
    """
    from cropclf.data.loading import Run, annotations_path, load_frame, prepare

    run = Run(run_dir)
    run_dir, cfg = run.dir, run.config
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise CropclfError(f"--epochs must be a whole number >= 1. Received: {epochs!r}")
        cfg = cfg.replace(**{"train.epochs": epochs})
    if folds < 2:
        raise CropclfError(f"--folds must be >= 2 (each region is scored by a model that never saw it). "
                           f"Received: {folds}")
    heads = list(cfg.data.heads)
    out_dir = Path(out_dir) if out_dir else run_dir / ("review_simulated" if simulate_noise else "review")
    source = annotations_path(cfg, log)
    frame = load_frame(cfg, log)
    maps = build_label_maps(frame, heads)  # today's labels: the run's may predate corrections
    data = prepare(cfg, maps, dict.fromkeys(frame["path"], "train"), log=log, frame=frame)
    try:
        from cropclf.training import _check_images

        _check_images(cfg, data, log)  # missing images stop a review as they stop training
        used = _usable(frame, maps, cfg, data.store)
        flipped: dict = {}
        if simulate_noise:
            frame, flipped = flip_labels(frame, used, heads, simulate_noise, noise_seed)
        given = {h: maps[h].encode(frame.loc[used, head_column(frame, h)].astype(str).tolist()) for h in heads}
        fold_of = _folds(frame.loc[used, "path"], folds, cfg.train.seed)
        probs = {h: np.zeros((len(used), len(maps[h])), np.float32) for h in heads}
        for f in range(folds):
            held = fold_of == f
            log(f"fold {f + 1}/{folds}: training on {int((~held).sum())} regions, scoring {int(held.sum())} "
                f"held out ({cfg.train.epochs} epochs)")
            p = _fit_predict(cfg, maps, data.store, frame.loc[used[~held]], frame.loc[used[held]],
                             cfg.train.seed + f, verbose)
            for h in heads:
                probs[h][held] = p[h]
        issues = _issues(frame, used, heads, maps, probs, given, flipped)
        artifacts.write_text(out_dir / "label_issues.csv", issues.to_csv(index=False, lineterminator="\n"))
        artifacts.write_text(out_dir / "out_of_sample.csv", _probability_table(frame, used, heads, maps, probs, given)
                             .to_csv(index=False, lineterminator="\n"))
        _suspect_sheet(frame, maps, data.store, cfg, issues, out_dir / "suspects.png")
        result = {"run": str(run_dir), "folds": folds, "regions": len(used), "suspects": len(issues),
                  "per_head": {h: int((issues["head"] == h).sum()) for h in heads}}
        if simulate_noise:
            in_sample = None
            if baseline:
                log(f"baseline: one model trained on all {len(used)} regions, scoring them in sample")
                in_sample = _fit_predict(cfg, maps, data.store, frame.loc[used], frame.loc[used],
                                         cfg.train.seed, verbose)
            result["measurement"] = measure(used, heads, probs, in_sample, given, flipped, issues)
            result["measurement"].update(noise=simulate_noise, noise_seed=noise_seed)
            artifacts.write_json(out_dir / "measurement.json", result)
            log(format_measurement(result["measurement"]))
        else:
            result["via"] = str(_write_review_via(source, cfg, issues, out_dir))
    finally:
        data.store.close()
    log(f"{len(issues)} suspect label(s) among {len(used)} regions; wrote {out_dir}/label_issues.csv, suspects.png"
        + (f" and {Path(result['via']).name}" if "via" in result else ", measurement.json"))
    return result


def flip_labels(frame: pd.DataFrame, index, heads, fraction: float, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """A copy of ``frame`` with ``fraction`` of each head's labels (among ``index``) changed to
    another class present there, chosen at random (owned RNG). Returns it and head -> flipped index set.
    """
    rng = np.random.default_rng([seed, 13])
    frame, flipped = frame.copy(), {}
    for h in heads:
        column = head_column(frame, h)
        classes = sorted(set(frame.loc[index, column].astype(str)))
        if len(classes) < 2:
            raise CropclfError(f"head '{h}': one class only, nothing to flip a label to. Received: {classes}")
        chosen = rng.choice(np.asarray(index), int(round(fraction * len(index))), replace=False)
        for i in chosen:
            others = [c for c in classes if c != frame.at[i, column]]
            frame.at[i, column] = others[int(rng.integers(len(others)))]
        flipped[h] = set(chosen.tolist())
    return frame, flipped


def measure(used, heads, probs: dict, in_sample: dict | None, given: dict, flipped: dict,
            issues: pd.DataFrame) -> dict:
    """Per head, precision and recall of the flipped regions among the top-N (N: the number flipped)
    of: confident learning's suspects (pruned by noise rate); the simpler rule of flagging every
    region whose confident label is another class (the confident joint's off-diagonal); all regions
    by out-of-sample self-confidence; and (baseline) all regions by an in-sample model's probability
    of the given label."""
    out = {}
    used = np.asarray(used)
    for h in heads:
        truth, n = flipped[h], len(flipped[h])
        ranked = issues.loc[issues["head"] == h, "index"].tolist()
        rows = np.arange(len(used))
        oos = probs[h][rows, given[h]]
        _, confident = confident_joint(probs[h], given[h])
        off = np.flatnonzero((confident >= 0) & (confident != given[h]))
        out[h] = {"flipped": n, "confident_learning": top_n_hits(ranked, truth, n),
                  "off_diagonal": top_n_hits(used[off[np.argsort(oos[off], kind="stable")]], truth, n),
                  "out_of_sample_rank": top_n_hits(used[np.argsort(oos, kind="stable")], truth, n)}
        if in_sample is not None:
            ins = in_sample[h][rows, given[h]]
            out[h]["in_sample_baseline"] = top_n_hits(used[np.argsort(ins, kind="stable")], truth, n)
    return out


def format_measurement(m: dict) -> str:
    lines = [f"{'head':<10}{'flipped':>8}  {'ranking':<40}{'listed':>7}{'precision':>10}{'recall':>8}"]
    names = {"confident_learning": "confident learning (out of sample)",
             "off_diagonal": "confident label != given (out of sample)",
             "out_of_sample_rank": "out-of-sample p(given), lowest first",
             "in_sample_baseline": "baseline: in-sample p(given)"}
    for h, r in m.items():
        if not isinstance(r, dict):
            continue
        for key, name in names.items():
            if key in r:
                s = r[key]
                lines.append(f"{h:<10}{r['flipped']:>8}  {name:<40}{s['listed']:>7}{s['precision']:>10.3f}"
                             f"{s['recall']:>8.3f}")
    return "\n".join(lines)


# --- the pieces ----------------------------------------------------------------------------------

def _usable(frame, maps, cfg, store) -> np.ndarray:
    """Index of the regions a model can train on: croppable and labelled for every head."""
    from cropclf.data.sequence import CropSequence

    return np.asarray(CropSequence(frame, maps, cfg.train.batch_size, cfg.crop, False, store=store).index)


def _folds(paths: pd.Series, k: int, seed: int) -> np.ndarray:
    """Fold number per region: images shuffled (owned RNG) and dealt out, so no image spans two folds."""
    images = sorted(set(paths))
    if len(images) < k:
        raise CropclfError(f"{k} folds need at least {k} images with labelled regions. Received: {len(images)}")
    order = np.random.default_rng([seed, 17]).permutation(len(images))
    fold = {images[j]: n % k for n, j in enumerate(order)}
    return paths.map(fold).to_numpy()


def _fit_predict(cfg: Config, maps, store, train_frame, score_frame, seed: int, verbose) -> dict:
    """A model trained as the run was (its config, epochs and fine-tuning stages), then scoring.

    There is no validation split to watch, so each stage's learning rate follows a cosine from the
    stage's rate down to near zero over its epochs instead of halving on plateaus: a fixed budget
    ends converged rather than wherever the last plateau left it.
    """
    import keras

    from cropclf.data.sequence import CropSequence
    from cropclf.model import apply_stage, build_model, stage, stage_spans
    from cropclf.training import _set_precision

    _set_precision(cfg)
    kw = dict(workers=cfg.train.workers, use_multiprocessing=cfg.train.use_multiprocessing)
    weights = balanced_class_weights(train_frame, maps, store.has) if cfg.train.class_weight == "balanced" else None
    train_seq = CropSequence(train_frame, maps, cfg.train.batch_size, cfg.crop, cfg.augment, seed=seed,
                             store=store, class_weights=weights, **kw)
    keras.utils.set_random_seed(seed)  # weights and dropout, as training does; data has its own RNGs
    model = build_model(cfg.model, cfg.crop.image_size, {h: len(m) for h, m in maps.items()}, seed)
    if verbose is None:
        verbose = 2 if os.environ.get("CROPCLF_QUIET") is not None else 1
    for start, end in stage_spans(cfg, 0, cfg.train.epochs):
        apply_stage(model, cfg, stage(cfg, start))  # a fresh optimizer per stage, as training does
        train_seq.set_epoch(start)
        model.fit(train_seq, epochs=end, initial_epoch=start, shuffle=False, verbose=verbose, callbacks=[
            keras.callbacks.LearningRateScheduler(cosine_decay(float(model.optimizer.learning_rate), start, end))])
    score_seq = CropSequence(score_frame, maps, cfg.train.batch_size, cfg.crop, False, store=store, **kw)
    probs = model.predict(score_seq, verbose=0)
    for seq in (train_seq, score_seq):
        seq.close()
    keras.backend.clear_session()
    keys = output_keys(list(maps))
    return {h: np.asarray(probs[keys[h]], np.float32) for h in maps}


def cosine_decay(rate: float, start: int, end: int):
    """A ``LearningRateScheduler`` function for epochs ``[start, end)``: ``rate`` at ``start``, then a
    half cosine towards zero at ``end`` (the last epoch gets a few per cent of ``rate``)."""
    span = max(end - start, 1)

    def schedule(epoch, current=None):
        return float(rate * 0.5 * (1 + np.cos(np.pi * (epoch - start) / span)))
    return schedule


def _issues(frame, used, heads, maps, probs, given, flipped) -> pd.DataFrame:
    rows = []
    for h in heads:
        suspect, confident, self_conf = confident_learning(probs[h], given[h])
        for k in np.flatnonzero(suspect):
            i = used[k]
            rows.append({"file": frame.at[i, "filename"], "row": frame.at[i, "row"],
                         "region_id": int(frame.at[i, "region_id"]), "head": h,
                         "given": maps[h].classes[given[h][k]], "suggested": maps[h].classes[confident[k]],
                         "score": round(float(self_conf[k]), 6),
                         "suggested_score": round(float(probs[h][k, confident[k]]), 6), "index": int(i),
                         **({"flipped": i in flipped[h]} if flipped else {})})
    columns = ["file", "row", "region_id", "head", "given", "suggested", "score", "suggested_score", "index"]
    issues = pd.DataFrame(rows, columns=columns + (["flipped"] if flipped else []))
    return issues.sort_values(["score", "head"], kind="stable").reset_index(drop=True)


def _probability_table(frame, used, heads, maps, probs, given) -> pd.DataFrame:
    """One row per reviewed region: where it is, its given label per head and every out-of-sample
    probability (``<head>:<class>``), so another ranking can be tried without training again."""
    table = pd.DataFrame({"file": frame.loc[used, "filename"].to_numpy(), "row": frame.loc[used, "row"].to_numpy(),
                          "region_id": frame.loc[used, "region_id"].to_numpy(), "index": np.asarray(used)})
    for h in heads:
        table[h] = [maps[h].classes[g] for g in given[h]]
        for j, name in enumerate(maps[h].classes):
            table[f"{h}:{name}"] = np.round(probs[h][:, j].astype(np.float64), 6)
    return table


def _suspect_sheet(frame, maps, store, cfg, issues, path, count: int = SHEET_COUNT) -> None:
    from cropclf.data.sequence import CropSequence

    top, crops = issues.head(count), []
    if len(top):
        seq = CropSequence(frame.loc[top["index"].unique()], maps, 1, cfg.crop, False, store=store)
        position = {label: k for k, label in enumerate(seq.index)}
        crops = list(seq.crops([position[i] for i in top["index"]]).astype(np.uint8))
    captions = [[f"{r.head}: {r.given}", f"-> {r.suggested}", f"p(given) {r.score:.2f}"] for r in top.itertuples()]
    contact_sheet(crops, captions, path,
                  title=f"{len(top)} of {len(issues)} suspect labels, least likely first (given -> suggested)")


def _write_review_via(source, cfg, issues: pd.DataFrame, out_dir: Path) -> Path:
    """The annotation file again with ``review`` on each suspect; images holding suspects first."""
    from cropclf.via import read_annotations
    from cropclf.via.writer import write_attributes

    frame = read_annotations(source, cfg.data.images, allow_outside_root=cfg.data.allow_outside_root)
    values, rank = {}, {}
    for r in issues.itertuples():  # lowest score first: the first note on a region is its worst
        note = f"{r.head}: {r.given} -> {r.suggested}? (p {r.score:.2f})"
        old = values.get(r.index, {}).get(REVIEW)
        values[r.index] = {REVIEW: f"{old}; {note}" if old else note}
        rank[r.file] = min(rank.get(r.file, r.score), r.score)
    out = out_dir / f"{Path(source).stem}_review{Path(source).suffix}"
    return write_attributes(source, out, frame, values, rank=rank, declare={
        REVIEW: "cropclf review: this label looks wrong (given -> suggested, p of the given label)"})
