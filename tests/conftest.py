import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before anything imports albumentations
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def write_image(path: Path, image: np.ndarray) -> Path:
    """Writes an RGB (or grey) uint8 image with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image[..., ::-1] if image.ndim == 3 and image.shape[2] == 3 else image
    assert cv2.imwrite(str(path), np.ascontiguousarray(data))
    return path


def regions_frame(rows, source="test.csv") -> pd.DataFrame:
    """A frame shaped like read_annotations' output from dicts with path/x/y/width/height/labels."""
    frame = pd.DataFrame(rows)
    frame.insert(0, "filename", [Path(p).name for p in frame["path"]])
    frame["region_id"] = range(len(frame))
    frame["shape"] = "rect"
    frame["row"] = [f"row {i + 2}" for i in range(len(frame))]
    for c in ("x", "y", "width", "height"):
        frame[c] = frame[c].astype(float)
    frame.attrs.update(source=source, images=sorted(set(frame["path"])), region_attributes=["name", "type"],
                       file_attributes=[])
    return frame


@pytest.fixture
def tiny_images(tmp_path):
    """Three non-square images (101x153, 77x64, 90x120) of smooth noise, and 12 regions on them.

    Each region has a unique ``name`` (so a batch's labels identify its regions) and a ``type``.
    Two regions cannot be cropped: one is zero-area, one lies outside its image.
    """
    rng = np.random.default_rng(0)
    shapes = [(101, 153), (77, 64), (90, 120)]
    paths = []
    for k, (h, w) in enumerate(shapes):
        img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        paths.append(str(write_image(tmp_path / f"img {k}.png", img)))
    boxes = [(0, 10, 10, 30, 40), (0, -5, 20, 20, 30), (0, 100, 80, 60, 30), (0, 140, 2, 13, 99),
             (1, 5, 5, 20, 20), (1, 40, 50, 30, 30), (1, 0, 0, 64, 77), (2, 10, 10, 50, 20),
             (2, 60, 40, 55, 45), (2, 30, 30, 8, 8), (2, 50, 50, 0, 10), (2, 500, 10, 10, 10)]
    rows = [{"path": paths[i], "x": x, "y": y, "width": w, "height": h, "name": f"r{k:02d}",
             "type": "ab"[k % 2]} for k, (i, x, y, w, h) in enumerate(boxes)]
    return regions_frame(rows)


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """A small demo dataset (16 scenes of 320x200) written as a VIA 2.x CSV."""
    from cropclf.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_images=16, image_size=(320, 200), seed=3,
                             progress=False)


@pytest.fixture(scope="session")
def shared_samples():
    path = SHARED / "via-samples"
    if not path.is_dir():
        pytest.skip("../shared/via-samples is not beside this checkout")
    return path


def read_json(path):
    return json.loads(Path(path).read_text())


def small_config(annotations, **overrides):
    """A config that trains in seconds on the small demo data."""
    from cropclf.config import Config

    cfg = Config().replace(**{"data.annotations": str(annotations), "crop.image_size": [32, 32],
                              "model.width": 16, "train.epochs": 15, "train.batch_size": 32,
                              "train.learning_rate": 0.003})
    return cfg.replace(**overrides) if overrides else cfg


@pytest.fixture(scope="session")
def demo_medium(tmp_path_factory):
    """80 scenes of 320x200 (~600 regions): enough to show learning in seconds."""
    from cropclf.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo80"), n_images=80, image_size=(320, 200), seed=5,
                             progress=False)


@pytest.fixture(scope="session")
def trained_run(demo_medium, tmp_path_factory):
    """A run trained once for the session (in this process), exported and evaluated."""
    from cropclf.training import train

    run_dir = tmp_path_factory.mktemp("runs") / "small"
    train(small_config(demo_medium), run_dir, log=lambda *a: None)
    return run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One file per kind of image, good and bad (tests/hostile_inputs.py `IMAGES`); ``missing.jpg`` is never
    written."""
    import hostile_inputs
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    rgb = hostile_inputs.smooth(60, 90)
    write_image(d / "good.png", rgb)
    alpha = np.full(rgb.shape[:2], 9, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(d / "alpha.png")
    Image.fromarray(rgb[..., 1], "L").save(d / "gray.png")
    write_image(d / "gray16.png", rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=98)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(rgb).save(d / "rotated.jpg", exif=exif.tobytes(), quality=98)
    Image.fromarray(rgb).save(d / "full.jpg", quality=98)
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    data = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])  # its header is whole
    (d / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "enormous.png").write_bytes(hostile_inputs.png_claiming(100_000, 100_000))
    return d
