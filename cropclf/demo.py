"""Built-in demo dataset: cluttered scenes of coloured shapes, annotated as a VIA 2.x CSV export.

Each scene is a smooth, low-saturation background with grey/brown clutter, and 5-10 objects
drawn on top: a shape (the `name` head) in a colour family (the `type` head), rotated,
shaded, sometimes outlined, partly overlapping and sometimes cut by the border. Regions are
annotated as a person would in VIA (mostly `rect`, some `polygon`, `ellipse`, `circle`),
tight around the object with +-2 px of jitter, and written byte for byte as VIA 2.x writes
its CSV (see /work/shared/VIA_FORMAT.md section 2). The same seed gives the same bytes.

    from cropclf.demo import make_demo_dataset
    csv_path = make_demo_dataset("data/demo")  # data/demo/annotations.csv + data/demo/images/
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import pathlib
import shutil
import sys

import cv2
import numpy as np

from cropclf.errors import ConfigError

DEMO_NAMES = ("circle", "square", "triangle", "star", "cross")
DEMO_TYPES = ("red", "green", "blue", "yellow")

_VERSION = 1  # bump when the drawing changes, so that old demo folders are regenerated
_HEADER = "filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes"
_HUES = {"red": 0.0, "green": 120.0, "blue": 228.0, "yellow": 54.0}  # family centres, degrees
_VALUE_MIN = {"red": 0.45, "green": 0.4, "blue": 0.5, "yellow": 0.75}  # dark yellow reads as brown
_REGION_SHAPES = ("rect", "polygon", "ellipse", "circle")
_REGION_P = (0.6, 0.2, 0.1, 0.1)
_MIN_VISIBLE = 0.7  # an object keeps >= 70% of its area visible when later ones overlap it
_MIN_INSIDE = 0.85  # and >= 85% of its box inside the image (>= ~80% once jittered)


# ----------------------------------------------------------------------------- geometry

def _unit_outline(name: str) -> np.ndarray:
    """The shape's outline as float (N, 2) points, circumradius ~1, centred on 0."""
    if name == "circle":
        a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    elif name == "square":
        a = np.pi / 4 + np.arange(4) * np.pi / 2
    elif name == "triangle":
        a = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    elif name == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    else:  # cross: arms of half-width w
        w = 0.3
        return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
                         (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)], float)
    return np.stack([np.cos(a), np.sin(a)], 1)


def _num(v: float, places: int = 3) -> int | float:
    """A number as JavaScript's JSON.stringify writes it after VIA's 3-decimal rounding."""
    v = round(float(v), places)
    return int(v) if v == int(v) else v


def _region(kind: str, pts: np.ndarray, name: str, rng: np.random.Generator) -> dict:
    """The VIA shape attributes a person would draw around the outline `pts`."""
    def jit(n=None):
        return rng.integers(-2, 3, size=n)

    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    if kind == "rect":
        x, y = int(round(x0)) + jit(), int(round(y0)) + jit()
        w, h = int(round(x1)) + jit() - x, int(round(y1)) + jit() - y
        return {"name": "rect", "x": int(x), "y": int(y), "width": int(w), "height": int(h)}
    if kind == "polygon":
        if name == "circle":  # a person clicks 10-16 points around a round object
            pts = pts[:: int(rng.choice([4, 5, 6]))]
        xs, ys = np.round(pts[:, 0]).astype(int) + jit(len(pts)), np.round(pts[:, 1]).astype(int) + jit(len(pts))
        return {"name": "polygon", "all_points_x": xs.tolist(), "all_points_y": ys.tolist()}
    cx, cy = (x0 + x1) / 2 + jit(), (y0 + y1) / 2 + jit()
    loose = 1.0 if name == "circle" else 1.12  # round tools drawn around corners overshoot them
    resized = rng.random() < 0.5  # VIA writes 3-decimal floats once a region has been resized
    if kind == "circle":
        r = loose * max(x1 - x0, y1 - y0) / 2 + jit()
        return {"name": "circle", "cx": int(cx), "cy": int(cy), "r": _num(r) if resized else int(round(r))}
    rx, ry = loose * (x1 - x0) / 2 + jit(), loose * (y1 - y0) / 2 + jit()
    if not resized:
        rx, ry = int(round(rx)), int(round(ry))
    return {"name": "ellipse", "cx": int(cx), "cy": int(cy), "rx": _num(rx), "ry": _num(ry), "theta": 0}


# ----------------------------------------------------------------------------- drawing

def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h / 360.0) % 1.0, s, v), np.float32) * 255


def _clutter_colour(rng: np.random.Generator) -> tuple:
    """Grey, brown or washed-out colours only: never the saturated object families."""
    kind = rng.integers(3)
    if kind == 0:
        c = _rgb(rng.uniform(0, 360), rng.uniform(0, 0.08), rng.uniform(0.12, 0.92))
    elif kind == 1:
        c = _rgb(rng.uniform(20, 36), rng.uniform(0.2, 0.4), rng.uniform(0.18, 0.45))
    else:
        c = _rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.22), rng.uniform(0.2, 0.85))
    return tuple(float(x) for x in c)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth gradient + low-saturation texture + clutter, as float32 RGB."""
    grid = np.stack([_rgb(rng.uniform(0, 360), rng.uniform(0, 0.18), rng.uniform(0.3, 0.9))
                     for _ in range(9)]).reshape(3, 3, 3)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    coarse = rng.standard_normal((h // 24 + 2, w // 24 + 2), np.float32)
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None] * rng.uniform(4, 14)
    scale = min(w, h) / 720
    if rng.random() < 0.3:  # faint tiles or shelves
        step = int(rng.uniform(60, 200) * scale) + 8
        c, thick = _clutter_colour(rng), int(rng.integers(1, 4))
        for x in range(int(rng.integers(step)), w, step):
            cv2.line(img, (x, 0), (x, h), c, thick, cv2.LINE_AA)
        for y in range(int(rng.integers(step)), h, step):
            cv2.line(img, (0, y), (w, y), c, thick, cv2.LINE_AA)
    for layer in range(2):  # an opaque layer, then a half-transparent one on top
        canvas = img.copy()
        for _ in range(int(rng.integers(10, 30))):
            c, kind = _clutter_colour(rng), rng.integers(4)
            p = (int(rng.integers(w)), int(rng.integers(h)))
            size = int(math.exp(rng.uniform(math.log(6), math.log(180))) * scale) + 2
            if kind == 0:
                q = (p[0] + int(rng.integers(-3, 4) * size), p[1] + int(rng.integers(-3, 4) * size))
                cv2.line(canvas, p, q, c, int(rng.integers(1, 7)), cv2.LINE_AA)
            elif kind == 1:
                axes = (size, int(size * rng.uniform(0.3, 1)))
                cv2.ellipse(canvas, p, axes, float(rng.uniform(0, 180)), 0, 360, c, -1, cv2.LINE_AA)
            elif kind == 2:
                box = cv2.boxPoints((p, (size * rng.uniform(0.5, 3), size), float(rng.uniform(0, 90))))
                thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
                cv2.drawContours(canvas, [np.round(box).astype(np.int32)], 0, c, thick, cv2.LINE_AA)
            else:  # a wandering stroke, like a cable or a crack
                walk = np.cumsum(rng.normal(0, size / 3, (8, 2)), 0) + p
                cv2.polylines(canvas, [walk.astype(np.int32)], False, c, int(rng.integers(1, 4)), cv2.LINE_AA)
        img = canvas if layer == 0 else cv2.addWeighted(img, 0.5, canvas, 0.5, 0)
    fine = cv2.resize(rng.standard_normal((h // 2, w // 2, 3), np.float32), (w, h))
    return img + fine * rng.uniform(2, 6)


def _place(rng, img, labels, areas, visible, kinds, name, kind, colour, w, h):
    """Draws one object on `img` if a spot keeps every object visible enough; returns its outline."""
    scale = min(w, h) / 720
    unit = _unit_outline(name) * [1.0, rng.uniform(0.85, 1.0)]
    for _ in range(30):
        size = math.exp(rng.uniform(math.log(40), math.log(260))) * scale
        t = rng.uniform(0, 2 * np.pi)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        centre = rng.uniform([0, 0], [w, h])
        if rng.random() < 0.15:  # push it against a border
            edge = rng.integers(4)
            centre[edge % 2] = (0 if edge < 2 else (w, h)[edge % 2]) + size / 2 * rng.uniform(0.5, 1.2) * (
                1 if edge < 2 else -1)
        pts = unit @ rot.T
        pts = pts * (size / (pts.max(0) - pts.min(0)).max()) + centre  # size = the box's long side
        (bx0, by0), (bx1, by1) = pts.min(0), pts.max(0)
        inside = (min(bx1, w) - max(bx0, 0)) * (min(by1, h) - max(by0, 0)) / ((bx1 - bx0) * (by1 - by0))
        if min(bx1, by1) <= 0 or bx0 >= w or by0 >= h or inside < _MIN_INSIDE:
            continue
        x0, y0 = np.floor(pts.min(0)).astype(int) - 12
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 12
        px0, py0, px1, py1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if px1 - px0 < 4 or py1 - py0 < 4:
            continue
        mask = np.zeros((py1 - py0, px1 - px0), np.uint8)
        cv2.fillPoly(mask, [np.round((pts - [px0, py0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        solid = mask > 127
        area = cv2.contourArea(pts.astype(np.float32))
        lab = labels[py0:py1, px0:px1]
        hit = np.bincount(lab[solid] + 1, minlength=len(areas) + 1)[1:]
        if any(visible[j] - hit[j] < _MIN_VISIBLE * areas[j] or kinds[j] == kind
               for j in np.flatnonzero(hit)):
            continue  # would hide too much of an object, or merge with one of the same colour
        break
    else:
        return None
    # Colour: a base colour, a linear shading across the object and a faint texture.
    base = _rgb(*colour)
    yy, xx = np.mgrid[py0:py1, px0:px1].astype(np.float32)
    d = rng.normal(size=2)
    d /= np.linalg.norm(d) + 1e-6
    ramp = ((xx - centre[0]) * d[0] + (yy - centre[1]) * d[1]) / (size / 2)
    shade = 1 + rng.uniform(0.05, 0.2) * np.clip(ramp, -1, 1)
    fill = base * shade[..., None] + rng.standard_normal(mask.shape + (3,), np.float32) * 3
    alpha = mask.astype(np.float32)
    if rng.random() < 0.35:  # a thin darker (or lighter) outline
        edge_c = tuple(float(c) for c in base * rng.choice([0.45, 0.6, 1.3]))
        poly = [np.round((pts - [px0, py0]) * 16).astype(np.int32)]
        cv2.polylines(fill, poly, True, edge_c, int(rng.integers(1, 3)), cv2.LINE_AA, 4)
        cv2.polylines(alpha, poly, True, 255.0, int(rng.integers(1, 3)), cv2.LINE_AA, 4)
    alpha = alpha[..., None] / 255
    patch = img[py0:py1, px0:px1]
    if rng.random() < 0.4:  # a soft drop shadow
        dx, dy = rng.integers(2, 9, size=2)
        shadow = np.zeros_like(alpha[..., 0])
        shadow[dy:, dx:] = alpha[: alpha.shape[0] - dy, : alpha.shape[1] - dx, 0]
        patch *= 1 - 0.35 * cv2.GaussianBlur(shadow, (0, 0), 3)[..., None]
    img[py0:py1, px0:px1] = patch * (1 - alpha) + fill * alpha
    for j in np.flatnonzero(hit):
        visible[j] -= hit[j]
    lab[solid] = len(areas)
    areas.append(area)
    kinds.append(kind)
    visible.append(int(solid.sum()))
    return pts


def _scene(rng: np.random.Generator, w: int, h: int, n_objects: int, quality: int):
    """One JPEG scene as bytes, and its regions as (shape attributes, region attributes)."""
    img = _background(rng, w, h)
    labels = np.full((h, w), -1, np.int32)
    areas, visible, kinds, regions = [], [], [], []
    for _ in range(n_objects):
        name, kind = DEMO_NAMES[rng.integers(5)], DEMO_TYPES[rng.integers(4)]
        colour = (_HUES[kind] + rng.uniform(-8, 8), rng.uniform(0.5, 1), rng.uniform(_VALUE_MIN[kind], 1))
        pts = _place(rng, img, labels, areas, visible, kinds, name, kind, colour, w, h)
        if pts is not None:
            shape = _region(_REGION_SHAPES[rng.choice(4, p=_REGION_P)], pts, name, rng)
            regions.append((shape, {"name": name, "type": kind}))
    # Camera: uneven light, a white-balance tint, sometimes defocus, always sensor noise.
    light = cv2.resize(rng.uniform(0.85, 1.1, (2, 2)).astype(np.float32), (w, h))
    img *= light[..., None] * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    if rng.random() < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.3))
    img += rng.standard_normal((h, w, 1), np.float32) * rng.uniform(1, 4)
    bgr = np.clip(img[..., ::-1] + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a demo scene as JPEG")
    return buf.tobytes(), regions


# ----------------------------------------------------------------------------- dataset

def _cell(obj: dict) -> str:
    """A JSON cell as VIA writes it: compact JSON, every `"` doubled, wrapped in quotes."""
    return '"' + json.dumps(obj, separators=(",", ":")).replace('"', '""') + '"'


def _is_complete(out_dir: pathlib.Path, args: dict) -> bool:
    try:
        meta = json.loads((out_dir / "demo.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("args") == args and (out_dir / "annotations.csv").is_file()
            and all((out_dir / f).is_file() for f in meta.get("images", [None])))


def make_demo_dataset(out_dir, n_images=240, image_size=(1280, 720), objects_per_image=(5, 10),
                      seed=0, progress=True) -> pathlib.Path:
    """Writes the demo dataset (JPEG scenes + a VIA 2.x CSV) and returns the CSV's path.

    The folder is built beside `out_dir` and renamed into place, so it is either complete or
    absent. When `out_dir` already holds a dataset made with the same arguments (recorded in
    `out_dir/demo.json`), it is reused as is.

    Args:
        out_dir: folder to write `images/scene_0000.jpg ...`, `annotations.csv` and `demo.json`.
        n_images: number of scenes.
        image_size: `(width, height)` of each scene in pixels.
        objects_per_image: `(low, high)`, inclusive range of objects tried per scene.
        seed: seed of the owned RNG; the same seed gives byte-identical files.
        progress: print a progress line to stderr every 10%.

    Returns:
        The path of `out_dir/annotations.csv`.

    Raises:
        ConfigError: an argument is out of range, or `out_dir` holds files that are not a demo.
    """
    w, h = (int(v) for v in image_size)
    lo, hi = (int(v) for v in objects_per_image)
    if int(n_images) < 1:
        raise ConfigError(f"`n_images` must be >= 1. Received: n_images={n_images}")
    if w < 64 or h < 64:
        raise ConfigError(f"`image_size` must be (width, height), each >= 64. Received: image_size={image_size}")
    if not 0 <= lo <= hi:
        raise ConfigError(f"`objects_per_image` must be (low, high) with 0 <= low <= high. "
                          f"Received: objects_per_image={objects_per_image}")
    out_dir = pathlib.Path(out_dir)
    csv_path = out_dir / "annotations.csv"
    args = {"version": _VERSION, "n_images": int(n_images), "image_size": [w, h],
            "objects_per_image": [lo, hi], "seed": int(seed)}
    if _is_complete(out_dir, args):
        return csv_path
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "demo.json").exists():
        raise ConfigError(f"`out_dir` holds files but no demo.json, so it is not a demo dataset "
                          f"and will not be replaced. Received: out_dir={out_dir}")

    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    try:
        # One child RNG per scene: scene i is the same whatever n_images is.
        rngs = np.random.default_rng(int(seed)).spawn(int(n_images))
        lines, images = [_HEADER], []
        for i, rng in enumerate(rngs):
            n_obj = int(rng.integers(lo, hi + 1))
            data, regions = _scene(rng, w, h, n_obj, quality=int(rng.integers(86, 94)))
            fname = f"images/scene_{i:04d}.jpg"
            (tmp / fname).write_bytes(data)
            images.append(fname)
            if not regions:  # VIA still writes one row for an image without regions
                lines.append(f'{fname},{len(data)},"{{}}",0,0,"{{}}","{{}}"')
            for k, (shape, attrs) in enumerate(regions):
                lines.append(f'{fname},{len(data)},"{{}}",{len(regions)},{k},{_cell(shape)},{_cell(attrs)}')
            if progress and (i + 1) * 10 // n_images > i * 10 // n_images:
                print(f"demo: {i + 1}/{n_images} images", file=sys.stderr, flush=True)
        (tmp / "annotations.csv").write_bytes("\n".join(lines).encode("utf-8"))  # no final newline
        (tmp / "demo.json").write_text(json.dumps({"args": args, "images": images}))
        old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return csv_path
