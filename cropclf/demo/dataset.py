"""Built-in demo dataset: the scenes of `demo.scenes` as JPEGs and a VIA 2.x CSV export, written
byte for byte as VIA 2.x writes its CSV (`pack_via_metadata("csv")` in via.js, `via.vocabulary`).
The same seed gives the same bytes.

    from cropclf.demo import make_demo_dataset
    csv_path = make_demo_dataset("data/demo")  # data/demo/annotations.csv + data/demo/images/
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from cropclf import artifacts
from cropclf.demo.scenes import VERSION, scene
from cropclf.errors import ConfigError
from cropclf.progress import Progress
from cropclf.via.vocabulary import VIA_CSV_COLUMNS, dump, quote_json_cell


def _is_complete(out_dir: pathlib.Path, args: dict) -> bool:
    """Whether `out_dir` holds every file of a demo made with exactly `args`."""
    try:
        meta = json.loads((out_dir / "demo.json").read_text())
    except (OSError, ValueError):
        return False
    images = meta.get("images")
    return (meta.get("args") == args and (out_dir / "annotations.csv").is_file()
            and isinstance(images, list) and len(images) == args["n_images"]
            and all((out_dir / str(f)).is_file() for f in images))


def _write(out_dir: pathlib.Path, args: dict, progress: bool) -> None:
    """Generates every scene into `out_dir` (which must not exist yet)."""
    n, (w, h), (lo, hi) = args["n_images"], args["image_size"], args["objects_per_image"]
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    # One child RNG per scene: scene i is the same whatever `n_images` is.
    rngs = np.random.default_rng(args["seed"]).spawn(n)
    lines, images = [",".join(VIA_CSV_COLUMNS)], []  # VIA 2.x: no leading "#"
    bar = Progress(n, "demo: images", enabled=progress)
    for i, rng in enumerate(rngs):
        n_objects = int(rng.integers(lo, hi + 1))
        data, regions = scene(rng, w, h, n_objects, quality=int(rng.integers(86, 94)))
        fname = f"images/scene_{i:04d}.jpg"
        (out_dir / fname).write_bytes(data)
        images.append(fname)
        head = f'{fname},{len(data)},"{{}}"'  # filename and size raw, file attributes empty
        if not regions:  # VIA still writes one row for an image without regions
            lines.append(f'{head},0,0,"{{}}","{{}}"')
        for k, (shape, attrs) in enumerate(regions):
            lines.append(f"{head},{len(regions)},{k},{quote_json_cell(dump(shape))},{quote_json_cell(dump(attrs))}")
        bar.update()
    bar.close()
    (out_dir / "annotations.csv").write_bytes("\n".join(lines).encode("utf-8"))  # no final newline
    (out_dir / "demo.json").write_text(json.dumps({"args": args, "images": images}))


def make_demo_dataset(
    out_dir: str | os.PathLike,
    n_images: int = 240,
    image_size: tuple[int, int] = (1280, 720),
    objects_per_image: tuple[int, int] = (5, 10),
    seed: int = 0,
    progress: bool = True,
) -> pathlib.Path:
    """Writes the demo dataset (JPEG scenes + a VIA 2.x CSV) and returns the CSV's path.

    The folder is built beside `out_dir` and renamed into place (`artifacts.atomic_dir`), so it is
    either complete or absent. When `out_dir` already holds a dataset made with the same arguments (recorded in
    `out_dir/demo.json`), it is reused as is; a demo made otherwise is replaced.

    Args:
        out_dir: folder to write `images/scene_0000.jpg ...`, `annotations.csv` and `demo.json`.
        n_images: number of scenes.
        image_size: `(width, height)` of each scene in pixels.
        objects_per_image: `(low, high)`, inclusive range of objects tried per scene; a few
            may not fit and are left out.
        seed: seed of the owned RNG; the same seed gives byte-identical files.
        progress: show a progress bar on stderr (`progress.Progress`).

    Returns:
        The path of `out_dir/annotations.csv`.

    Raises:
        ConfigError: an argument is out of range, or `out_dir` holds files that are not a demo.
    """
    if len(image_size) != 2 or len(objects_per_image) != 2:
        raise ConfigError(
            "`image_size` and `objects_per_image` must be pairs. "
            f"Received: image_size={image_size}, objects_per_image={objects_per_image}"
        )
    (w, h), (lo, hi) = image_size, objects_per_image
    if n_images < 1:
        raise ConfigError(f"`n_images` must be >= 1. Received: n_images={n_images}")
    if w < 64 or h < 64:
        raise ConfigError(
            f"`image_size` must be (width, height), each >= 64. Received: image_size={image_size}"
        )
    if not 0 <= lo <= hi:
        raise ConfigError(
            "`objects_per_image` must be (low, high) with 0 <= low <= high. "
            f"Received: objects_per_image={objects_per_image}"
        )
    out_dir = pathlib.Path(out_dir)
    args = {"version": VERSION, "n_images": int(n_images), "image_size": [int(w), int(h)],
            "objects_per_image": [int(lo), int(hi)], "seed": int(seed)}
    if _is_complete(out_dir, args):
        return out_dir / "annotations.csv"
    if out_dir.exists() and not (out_dir / "demo.json").is_file() and (
        not out_dir.is_dir() or any(out_dir.iterdir())
    ):
        raise ConfigError(
            "`out_dir` holds files but no demo.json, so it is not a demo dataset and will not "
            f"be replaced. Received: out_dir={out_dir}"
        )

    with artifacts.atomic_dir(out_dir) as tmp:
        _write(tmp, args, progress)
    return out_dir / "annotations.csv"
