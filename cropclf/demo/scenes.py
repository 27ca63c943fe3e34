"""Drawing the demo's scenes: cluttered scenes of coloured shapes and their VIA regions.

Each scene is a smooth, low-saturation background with grey/brown clutter, and 5-10 objects
drawn on top: a shape (the `name` head) in a colour family (the `type` head), rotated,
shaded, sometimes outlined, partly overlapping and sometimes cut by the border. Regions are
annotated as a person would in VIA (mostly `rect`, some `polygon`, `ellipse`, `circle`),
tight around the object with +-2 px of jitter (`demo.dataset` writes them as VIA 2.x does).
The same RNG gives the same bytes.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

DEMO_NAMES = ("circle", "square", "triangle", "star", "cross")
DEMO_TYPES = ("red", "green", "blue", "yellow")

VERSION = 1  # bump when the drawing changes, so that old demo folders are regenerated
_HUES = {"red": 0.0, "green": 120.0, "blue": 228.0, "yellow": 54.0}  # family centres, degrees
_VALUE_MIN = {"red": 0.45, "green": 0.4, "blue": 0.5, "yellow": 0.75}  # dark yellow reads as brown
_REGION_SHAPES = ("rect", "polygon", "ellipse", "circle")
_REGION_P = (0.6, 0.2, 0.1, 0.1)
_MIN_VISIBLE = 0.75  # an object keeps >= 75% of its area visible when later ones overlap it
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
    def jit(n=None):  # a person's +-2 px
        return int(rng.integers(-2, 3)) if n is None else rng.integers(-2, 3, size=n)

    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    if kind == "rect":
        x, y = int(round(x0)) + jit(), int(round(y0)) + jit()
        w, h = int(round(x1)) + jit() - x, int(round(y1)) + jit() - y
        return {"name": "rect", "x": x, "y": y, "width": w, "height": h}
    if kind == "polygon":
        if name == "circle":  # a person clicks 10-16 points around a round object
            pts = pts[:: int(rng.choice([4, 5, 6]))]
        xs = np.round(pts[:, 0]).astype(int) + jit(len(pts))
        ys = np.round(pts[:, 1]).astype(int) + jit(len(pts))  # VIA 2: first point not repeated
        return {"name": "polygon", "all_points_x": xs.tolist(), "all_points_y": ys.tolist()}
    resized = rng.random() < 0.5  # VIA writes 3-decimal floats once a region has been resized
    if kind == "circle":  # drawn around the object, so corners stick out no further than the rim
        (cx, cy), r = cv2.minEnclosingCircle(pts.astype(np.float32))
        r = r * rng.uniform(0.95, 1.02) + jit()
        return {"name": "circle", "cx": int(round(cx)) + jit(), "cy": int(round(cy)) + jit(),
                "r": _num(r) if resized else int(round(r))}
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = (x1 - x0) / 2, (y1 - y0) / 2
    k = np.sqrt((((pts - [cx, cy]) / [a, b]) ** 2).sum(1)).max() * rng.uniform(0.95, 1.02)
    rx, ry = k * a + jit(), k * b + jit()
    if not resized:
        rx, ry = int(round(rx)), int(round(ry))
    return {"name": "ellipse", "cx": int(round(cx)) + jit(), "cy": int(round(cy)) + jit(),
            "rx": _num(rx), "ry": _num(ry), "theta": 0}


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
    img = np.clip(img, 0, 255).astype(np.uint8)  # OpenCV anti-aliases lines on 8-bit images only
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
                box = cv2.boxPoints((p, (size * rng.uniform(0.5, 3), size), rng.uniform(0, 90)))
                thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
                cv2.drawContours(canvas, [np.round(box).astype(np.int32)], 0, c, thick, cv2.LINE_AA)
            else:  # a wandering stroke, like a cable or a crack
                walk = np.cumsum(rng.normal(0, size / 3, (8, 2)), 0) + p
                thick = int(rng.integers(1, 4))
                cv2.polylines(canvas, [walk.astype(np.int32)], False, c, thick, cv2.LINE_AA)
        img = canvas if layer == 0 else cv2.addWeighted(img, 0.5, canvas, 0.5, 0)
    fine = cv2.resize(rng.standard_normal((h // 2, w // 2, 3), np.float32), (w, h))
    return img.astype(np.float32) + fine * rng.uniform(2, 6)


class _Occupancy:
    """Which object covers each pixel, so that a new object never hides too much of the others."""

    def __init__(self, w: int, h: int):
        self.owner = np.full((h, w), -1, np.int32)
        self.area, self.visible, self.kind = [], [], []

    def fits(self, y0: int, x0: int, solid: np.ndarray, kind: str):
        """The pixels the new object takes from each object, or None if it would spoil one."""
        owner = self.owner[y0:y0 + solid.shape[0], x0:x0 + solid.shape[1]]
        hit = np.bincount(owner[solid] + 1, minlength=len(self.area) + 1)[1:]
        for j in np.flatnonzero(hit):  # too hidden, or merged into an object of its own colour
            if self.visible[j] - hit[j] < _MIN_VISIBLE * self.area[j] or self.kind[j] == kind:
                return None
        return hit

    def add(self, y0: int, x0: int, solid: np.ndarray, kind: str, area: float, hit: np.ndarray):
        self.visible = [v - int(c) for v, c in zip(self.visible, hit)]
        self.owner[y0:y0 + solid.shape[0], x0:x0 + solid.shape[1]][solid] = len(self.area)
        self.area.append(area)
        self.visible.append(int(solid.sum()))
        self.kind.append(kind)


def _outline(rng: np.random.Generator, name: str, w: int, h: int) -> np.ndarray:
    """A random placement of the shape: rotated, 40-260 px (at 720 px high), >= 85% inside."""
    unit = _unit_outline(name) * [1.0, rng.uniform(0.85, 1.0)]
    size = math.exp(rng.uniform(math.log(40), math.log(260))) * min(w, h) / 720
    t = rng.uniform(0, 2 * np.pi)
    pts = unit @ np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    pts *= size / (pts.max(0) - pts.min(0)).max()  # size = the box's long side
    centre = rng.uniform([0, 0], [w, h])
    if rng.random() < 0.15:  # push it against a border
        axis, far = rng.integers(2), rng.random() < 0.5
        reach = (pts.max(0) - pts.min(0))[axis] / 2 * rng.uniform(0.6, 1.2)
        centre[axis] = (w, h)[axis] - reach if far else reach
    return pts + centre


def _inside(pts: np.ndarray, w: int, h: int) -> float:
    """The fraction of the outline's box that lies inside the image."""
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    iw, ih = max(0.0, min(x1, w) - max(x0, 0)), max(0.0, min(y1, h) - max(y0, 0))
    return iw * ih / ((x1 - x0) * (y1 - y0))


def _round_box(shape: dict) -> np.ndarray:
    """The corners of a VIA circle's or ellipse's (unrotated) box."""
    rx, ry = (shape["r"], shape["r"]) if shape["name"] == "circle" else (shape["rx"], shape["ry"])
    return np.array([(shape["cx"] - rx, shape["cy"] - ry), (shape["cx"] + rx, shape["cy"] + ry)])


def _place(rng, img, occ: _Occupancy, name: str, kind: str):
    """Draws one object on `img` where it fits (30 tries); returns its outline, or None."""
    h, w = occ.owner.shape
    for _ in range(30):
        pts = _outline(rng, name, w, h)
        if _inside(pts, w, h) < _MIN_INSIDE:
            continue
        x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - 12, 0)
        x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 12, (w, h))
        poly = [np.round((pts - [x0, y0]) * 16).astype(np.int32)]  # 4 fractional bits
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, poly, 255, cv2.LINE_AA, 4)
        hit = occ.fits(y0, x0, mask > 127, kind)
        if hit is not None:
            break
    else:
        return None
    # Colour: jittered within the family, shaded linearly across the object, a faint texture.
    hue, sat = _HUES[kind] + rng.uniform(-8, 8), rng.uniform(0.5, 1)
    base = _rgb(hue, sat, rng.uniform(_VALUE_MIN[kind], 1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    (cx, cy), radius = pts.mean(0), (pts.max(0) - pts.min(0)).max() / 2
    d = rng.normal(size=2)
    d /= np.linalg.norm(d) + 1e-6
    ramp = np.clip(((xx - cx) * d[0] + (yy - cy) * d[1]) / radius, -1, 1)
    fill = base * (1 + rng.uniform(0.05, 0.2) * ramp)[..., None]
    fill += rng.standard_normal(mask.shape + (3,), np.float32) * 3
    alpha = mask[..., None] / np.float32(255)
    if rng.random() < 0.35:  # a thin darker (or lighter) outline
        line = np.zeros_like(mask)
        cv2.polylines(line, poly, True, 255, int(rng.integers(1, 3)), cv2.LINE_AA, 4)
        line = line[..., None] / np.float32(255)
        fill = fill * (1 - line) + np.clip(base * rng.choice([0.45, 0.6, 1.3]), 0, 255) * line
        alpha = np.maximum(alpha, line)
    patch = img[y0:y1, x0:x1]
    if rng.random() < 0.4:  # a soft drop shadow
        dx, dy = rng.integers(2, 9, size=2)
        shadow = np.zeros_like(alpha[..., 0])
        shadow[dy:, dx:] = alpha[: alpha.shape[0] - dy, : alpha.shape[1] - dx, 0]
        patch *= 1 - 0.35 * cv2.GaussianBlur(shadow, (0, 0), 3)[..., None]
    img[y0:y1, x0:x1] = patch * (1 - alpha) + fill * alpha
    occ.add(y0, x0, mask > 127, kind, cv2.contourArea(pts.astype(np.float32)), hit)
    return pts


def scene(rng: np.random.Generator, w: int, h: int, n_objects: int, quality: int):
    """One JPEG scene as bytes, and its regions as (shape attributes, region attributes)."""
    img = _background(rng, w, h)
    occ, regions = _Occupancy(w, h), []
    for _ in range(n_objects):
        name, kind = DEMO_NAMES[rng.integers(5)], DEMO_TYPES[rng.integers(4)]  # independent
        pts = _place(rng, img, occ, name, kind)
        if pts is not None:
            shape = _region(_REGION_SHAPES[rng.choice(4, p=_REGION_P)], pts, name, rng)
            if shape["name"] in ("ellipse", "circle") and _inside(_round_box(shape), w, h) < 0.85:
                shape = _region("rect", pts, name, rng)  # the round tool overshoots the border
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
