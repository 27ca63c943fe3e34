"""The contact sheet of `inspect_dataset`: per head and class, sampled crops as the model sees them, with
the annotated box drawn on each (`data.crops.box_in_crop`)."""

from __future__ import annotations

import cv2
import numpy as np

from cropclf import artifacts
from cropclf.data.crops import box_in_crop, canonical_crop
from cropclf.data.images import load_image
from cropclf.data.splits import SPLITS
from cropclf.errors import ImageError
from cropclf.inspection.checks import UNLABELLED, finding, span
from cropclf.plots import ascii_text
from cropclf.progress import Progress

MAX_CLASSES = 40  # sheet rows per head; beyond this only the most frequent classes are drawn
CELL = 128  # longest side of a crop as drawn in the sheet, in pixels


def sample(frame, usable, heads, per_class, seed) -> dict:
    """Up to ``per_class`` usable regions per head and class, drawn with an owned RNG."""
    rng = np.random.default_rng([seed, 11])
    out = {}
    for head, column in heads.items():
        labels = frame[column].iloc[usable].replace("", UNLABELLED)
        out[head] = {c: sorted(rng.permutation(np.asarray(idx))[:per_class].tolist())
                     for c, idx in labels.groupby(labels, sort=True).groups.items()}
    return out


def decode_samples(frame, rows, samples, crop, findings, left_out, progress) -> dict:
    """Decodes each sampled image once and cuts its crops; an image that fails is a finding."""
    wanted = sorted({k for classes in samples.values() for ks in classes.values() for k in ks})
    crops, boxes = {}, frame[["x", "y", "width", "height"]].to_numpy(float)
    by_path = frame.iloc[wanted].groupby("path", sort=False).groups
    with Progress(len(by_path), "Decoding sampled images", enabled=progress) as bar:
        for path, index in by_path.items():
            try:
                image = load_image(path)
                crops.update({k: canonical_crop(image, boxes[k], crop.image_size, crop.margin,
                                                crop.resize, crop.pad_value) for k in index})
            except ImageError as e:
                every = np.flatnonzero(frame["path"].to_numpy() == path)
                left_out[every] = True
                message = str(e).removeprefix(f"{path}: ")
                findings.append(finding("unreadable_image", frame.at[every[0], "filename"],
                                        span([rows[k] for k in every]),
                                        f"{message} ({len(every)} region(s) unusable)", every[0]))
            bar.update()
    return crops


def draw_sheet(frame, rows, samples, crops, table, cfg, findings, source_name, per_class,
                path) -> None:
    """A section per head, a row per class: sampled crops with their box, class, file and row."""
    out_hw, flagged = tuple(cfg.crop.image_size), {f.label for f in findings}
    scale = CELL / max(out_hw)
    dh, dw = round(out_hw[0] * scale), round(out_hw[1] * scale)
    label_w, cw, ch = 170, max(dw, 132) + 6, dh + 3 * 14 + 10  # 3 caption lines under each crop
    width = max(label_w + per_class * cw, 760)
    parts = [_band(width, [f"{source_name}: {len(frame)} regions on "
                           f"{frame['filename'].nunique()} images",
                           f"Crops as the model sees them ({out_hw[0]}x{out_hw[1]}, margin "
                           f"{cfg.crop.margin:g}, {cfg.crop.resize}); magenta: the annotated box; "
                           "red '!': the region has a problem listed in report.json"],
                   (0.55, 0.42), (235, 235, 235))]
    for head in (h for h in cfg.data.heads if h not in samples):
        parts.append(_band(width, [f"head '{head}': no such attribute in the annotations "
                                   "(see the problems in report.json)"], (0.6,), (200, 200, 255)))
    for head, classes in samples.items():
        counts = table[table["head"] == head].set_index("class")
        usable = counts[list(SPLITS)].sum(axis=1)
        shown = set(usable.sort_values(ascending=False, kind="stable").index[:MAX_CLASSES])
        hidden = f"; {len(counts) - len(shown)} rarer class(es) not drawn" if len(counts) > len(
            shown) else ""
        parts.append(_band(width, [f"head '{head}': {len(counts)} class(es), up to {per_class} "
                                   f"random crops each{hidden}"], (0.6,), (210, 225, 245)))
        for cls in (c for c in counts.index if c in shown):  # table order: unlabelled last
            row, n = np.full((ch, width, 3), 255, np.uint8), counts.loc[cls]
            _text(row, cls, (6, 22), 0.55, width=label_w - 8, thick=2)
            _text(row, f"{usable[cls]} usable region(s)", (6, 44), 0.42)
            _text(row, " ".join(f"{s} {n[s]}" for s in SPLITS), (6, 62), 0.42,
                  width=label_w - 8, color=(90, 90, 90))
            if n["left_out"]:
                _text(row, f"{n['left_out']} left out", (6, 80), 0.42, color=(200, 0, 0))
            if cls not in classes:
                _text(row, "no usable region to show", (label_w + 6, dh // 2), 0.5,
                      color=(200, 0, 0))
            for j, k in enumerate(classes.get(cls, [])):
                x0 = label_w + j * cw
                cell = crops.get(k)
                if cell is None:
                    cell = np.full((dh, dw, 3), 200, np.uint8)
                    _text(cell, "unreadable", (4, dh // 2), 0.45, color=(200, 0, 0))
                else:
                    cell = cv2.resize(cell, (dw, dh), interpolation=cv2.INTER_NEAREST)
                    _outline(cell, frame.loc[k, ["x", "y", "width", "height"]].to_numpy(float),
                             out_hw, scale, cfg.crop)
                row[4:4 + dh, x0 + (cw - dw) // 2:x0 + (cw - dw) // 2 + dw] = cell
                caption = [cls, frame.at[k, "filename"], rows[k] + (" !" if k in flagged else "")]
                for i, line in enumerate(caption):
                    red = i == 2 and k in flagged
                    _text(row, line, (x0 + 4, dh + 18 + 14 * i), 0.38, width=cw - 6,
                          color=(200, 0, 0) if red else (0, 0, 0))
            row[-1, :] = 215
            parts.append(row)
    sheet = np.ascontiguousarray(np.concatenate(parts, axis=0)[..., ::-1])
    ok, png = cv2.imencode(".png", sheet)
    if not ok:
        raise ImageError(f"{path}: OpenCV cannot encode the contact sheet. Received: {sheet.shape}")
    artifacts.write_bytes(path, png.tobytes())


def _outline(cell, box, out_hw, scale, crop) -> None:
    """Draws the annotated box on a crop shown at ``scale``; the margin around it is context."""
    x0, y0, x1, y1 = (v * scale for v in box_in_crop(box, out_hw, crop.margin, crop.resize))
    p = (round(x0), round(y0))
    q = (round(x1) - 1, round(y1) - 1)
    cv2.rectangle(cell, (p[0] - 1, p[1] - 1), (q[0] + 1, q[1] + 1), (0, 0, 0), 1, cv2.LINE_4)
    cv2.rectangle(cell, p, q, (255, 0, 255), 1, cv2.LINE_4)  # black-edged: shows on magenta too


def _band(width, lines, sizes, color) -> np.ndarray:
    """A full-width strip of text lines: the title, a head's header."""
    heights = [round(34 * s) + 6 for s in sizes]
    band = np.full((sum(heights) + 8, width, 3), color, np.uint8)
    for i, (line, size) in enumerate(zip(lines, sizes)):
        _text(band, line, (6, sum(heights[:i + 1])), size, width=width - 12,
              thick=1 if size < 0.6 else 2)
    return band


def _text(img, text, org, size, width=None, color=(0, 0, 0), thick=1) -> None:
    """ASCII text (OpenCV's fonts have no other glyphs), cut in the middle to fit ``width``."""
    text = ascii_text(str(text))
    font = cv2.FONT_HERSHEY_SIMPLEX
    while width and len(text) > 4 and cv2.getTextSize(text, font, size, thick)[0][0] > width:
        half = (len(text) - 3) // 2
        text = text[:half] + ".." + text[-(len(text) - half - 3):]
    cv2.putText(img, text, org, font, size, color, thick, cv2.LINE_AA)
