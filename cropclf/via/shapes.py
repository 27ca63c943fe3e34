"""VIA shapes (rect, circle, ellipse, polygon, polyline, point) -> their enclosing box in image pixels."""

from __future__ import annotations

import math

from cropclf.via.vocabulary import dump

SHAPE_KEYS = {"rect": ("x", "y", "width", "height"), "circle": ("cx", "cy", "r"),
              "ellipse": ("cx", "cy", "rx", "ry"), "polygon": ("all_points_x", "all_points_y"),
              "polyline": ("all_points_x", "all_points_y"), "point": ("cx", "cy")}
_PLAIN = (int, float)  # exactly these types (not bool)
MAX_COORDINATE = 1_000_000  # px: beyond any image side this tool decodes; larger is a typo or junk


def shape_box(shape: dict, fail, *where) -> tuple[str, float, float, float, float]:
    """Returns the shape name and its enclosing, unclipped axis-aligned box ``x, y, width, height``.

    ``fail(*where, problem, received)`` makes the `AnnotationError` that names the file and row
    (``where``: so the reader need not build a callable per region, which a million regions notice).
    """
    if shape.get("name") == "rect":  # the common case, first: four plain numbers within bounds
        x, y, w, h = shape.get("x"), shape.get("y"), shape.get("width"), shape.get("height")
        if type(x) in _PLAIN and type(y) in _PLAIN and type(w) in _PLAIN and type(h) in _PLAIN and (
                -MAX_COORDINATE <= x <= MAX_COORDINATE and -MAX_COORDINATE <= y <= MAX_COORDINATE
                and -MAX_COORDINATE <= w <= MAX_COORDINATE and -MAX_COORDINATE <= h <= MAX_COORDINATE):
            x, y, w, h = float(x), float(y), float(w), float(h)  # NaN fails the bounds: the slow path
            return "rect", min(x, x + w), min(y, y + h), abs(w), abs(h)
    if not shape:
        raise fail(*where, "the region has attributes but no shape; draw it in VIA.", "{}")
    name = shape.get("name")
    if not isinstance(name, str) or name not in SHAPE_KEYS:
        raise fail(*where, f"unknown shape name {name!r}; expected one of "
                           f"{', '.join(SHAPE_KEYS)}.", dump(shape))
    missing = [k for k in SHAPE_KEYS[name] if k not in shape]
    if missing:
        raise fail(*where, f"the {name} shape lacks {missing}; found {list(shape)}. Re-export "
                           "the file from VIA or fix the shape by hand.", dump(shape))

    def num(key, value):
        kind = type(value)
        if (kind is int or kind is float) and -MAX_COORDINATE <= value <= MAX_COORDINATE:
            return float(value)  # the common case, first: a plain number within bounds (NaN fails the test)
        number = None
        enormous = f"enormous (beyond +/-{MAX_COORDINATE:,} px, larger than any image)"
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                pass
            except OverflowError:  # an integer with hundreds of digits
                number = math.inf
        if number is None:
            kind = "not a number"
        elif key != "theta" and isinstance(value, int) and abs(value) > MAX_COORDINATE:
            kind = enormous
        elif not math.isfinite(number):
            kind = "not finite (NaN or infinity)"
        elif key != "theta" and abs(number) > MAX_COORDINATE:  # theta is an angle, in radians
            kind = enormous
        else:
            return number
        raise fail(*where, f"coordinate {key!r} of the {name} shape is {kind}; fix it "
                           "in VIA or by hand.", f"{key}={value!r} in {dump(shape)}")

    if name == "rect":
        x, y, w, h = (num(k, shape[k]) for k in SHAPE_KEYS[name])
        return name, min(x, x + w), min(y, y + h), abs(w), abs(h)
    if name == "point":
        return name, num("cx", shape["cx"]), num("cy", shape["cy"]), 0.0, 0.0
    if name in ("circle", "ellipse"):
        cx, cy, *radii = (num(k, shape[k]) for k in SHAPE_KEYS[name])
        rx, ry = abs(radii[0]), abs(radii[-1])
        theta = num("theta", shape["theta"]) if shape.get("theta") is not None else 0.0
        c, s = math.cos(theta), math.sin(theta)
        hx, hy = math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)
        return name, cx - hx, cy - hy, 2 * hx, 2 * hy
    xs, ys = shape["all_points_x"], shape["all_points_y"]
    if not isinstance(xs, list) or not isinstance(ys, list) or not xs or len(xs) != len(ys):
        found = [len(v) if isinstance(v, list) else type(v).__name__ for v in (xs, ys)]
        raise fail(*where, f"the {name}'s all_points_x and all_points_y must be non-empty "
                           f"lists of equal length; found {found[0]} and {found[1]}.", dump(shape))
    xs = [num("all_points_x", v) for v in xs]
    ys = [num("all_points_y", v) for v in ys]
    return name, min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
