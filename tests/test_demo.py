"""The demo dataset: deterministic, a genuine VIA 2.x CSV, sane boxes, balanced and true labels."""

import collections
import csv
import json

import cv2
import numpy as np
import pytest

from cropclf.demo import DEMO_NAMES, DEMO_TYPES, make_demo_dataset
from cropclf.errors import ConfigError

HEADER = [
    "filename", "file_size", "file_attributes", "region_count", "region_id",
    "region_shape_attributes", "region_attributes",
]
SIZE = (320, 200)  # width, height: non-square so that a swap shows up
SMALL = dict(n_images=6, image_size=SIZE, seed=0, progress=False)
HUES = {"red": 0, "green": 60, "blue": 114, "yellow": 27}  # OpenCV hue units (degrees / 2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "out", **SMALL)


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    csv_path = make_demo_dataset(tmp_path_factory.mktemp("demo40") / "out", n_images=40,
                                 image_size=SIZE, seed=1, progress=False)
    return _rows(csv_path)


def _rows(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


def _box(shape):
    """The (x0, y0, x1, y1) box around a VIA shape."""
    kind = shape["name"]
    if kind == "rect":
        return shape["x"], shape["y"], shape["x"] + shape["width"], shape["y"] + shape["height"]
    if kind == "polygon":
        xs, ys = shape["all_points_x"], shape["all_points_y"]
        return min(xs), min(ys), max(xs), max(ys)
    rx, ry = (shape["r"], shape["r"]) if kind == "circle" else (shape["rx"], shape["ry"])
    return shape["cx"] - rx, shape["cy"] - ry, shape["cx"] + rx, shape["cy"] + ry


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_bytes(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", **SMALL)
    assert again.read_bytes() == demo.read_bytes()
    assert _files(again.parent) == _files(demo.parent)


def test_different_seed_differs(demo, tmp_path):
    other = make_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    assert other.read_bytes() != demo.read_bytes()
    assert (other.parent / "images/scene_0000.jpg").read_bytes() != (
        demo.parent / "images/scene_0000.jpg").read_bytes()


def test_a_scene_does_not_depend_on_the_number_of_scenes(demo, tmp_path):
    fewer = make_demo_dataset(tmp_path / "fewer", **{**SMALL, "n_images": 2})
    assert _files(fewer.parent / "images") == {
        k: v for k, v in _files(demo.parent / "images").items() if k < "scene_0002"
    }
    assert demo.read_text().startswith(fewer.read_text() + "\n")


def test_csv_is_written_as_via_2_writes_it(demo):
    raw = demo.read_bytes()
    assert not raw.endswith(b"\n") and b"\r" not in raw and not raw.startswith(b"\xef\xbb\xbf")
    assert raw.split(b"\n")[0] == ",".join(HEADER).encode()
    with open(demo, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == HEADER
    for line, row in zip(raw.decode().split("\n")[1:], table[1:]):
        assert len(row) == 7
        assert line.startswith(f'{row[0]},{row[1]},"{{}}",{row[3]},{row[4]},"{{""name"":""')
        for cell in row[5:]:  # compact JSON, as JSON.stringify writes it
            assert cell == json.dumps(json.loads(cell), separators=(",", ":"))


def test_rows_match_the_images(demo):
    rows = _rows(demo)
    by_file = collections.defaultdict(list)
    for row in rows:
        by_file[row[0]].append(row)
    assert sorted(by_file) == [f"images/scene_{i:04d}.jpg" for i in range(6)]
    for name, group in by_file.items():
        path = demo.parent / name
        assert all(int(r[1]) == path.stat().st_size for r in group)
        assert [int(r[4]) for r in group] == list(range(len(group)))
        assert all(int(r[3]) == len(group) for r in group)
        assert cv2.imread(str(path)).shape == (SIZE[1], SIZE[0], 3)


def test_regions_are_valid_shapes_with_known_labels(larger):
    for row in larger:
        shape, attrs = json.loads(row[5]), json.loads(row[6])
        assert attrs["name"] in DEMO_NAMES and attrs["type"] in DEMO_TYPES
        assert set(attrs) == {"name", "type"}
        if shape["name"] == "rect":
            assert all(isinstance(shape[k], int) for k in ("x", "y", "width", "height"))
            assert shape["width"] > 4 and shape["height"] > 4
        elif shape["name"] == "polygon":
            xs, ys = shape["all_points_x"], shape["all_points_y"]
            assert len(xs) == len(ys) >= 3 and all(isinstance(v, int) for v in xs + ys)
            assert (xs[0], ys[0]) != (xs[-1], ys[-1])  # VIA 2 does not close the path
        elif shape["name"] == "ellipse":
            assert set(shape) == {"name", "cx", "cy", "rx", "ry", "theta"}
        else:
            assert shape["name"] == "circle" and set(shape) == {"name", "cx", "cy", "r"}


def test_boxes_lie_mostly_inside_the_image(larger):
    w, h = SIZE
    for row in larger:
        x0, y0, x1, y1 = _box(json.loads(row[5]))
        inside = max(0, min(x1, w) - max(x0, 0)) * max(0, min(y1, h) - max(y0, 0))
        assert inside >= 0.75 * (x1 - x0) * (y1 - y0), row


def test_labels_and_shapes_are_balanced(larger):
    assert len(larger) > 150
    for key, labels in (("name", DEMO_NAMES), ("type", DEMO_TYPES)):
        counts = collections.Counter(json.loads(r[6])[key] for r in larger)
        expected = len(larger) / len(labels)
        assert set(counts) == set(labels)
        assert all(0.65 * expected < c < 1.35 * expected for c in counts.values()), counts
    kinds = collections.Counter(json.loads(r[5])["name"] for r in larger)
    assert set(kinds) == {"rect", "polygon", "ellipse", "circle"}
    assert 0.45 < kinds["rect"] / len(larger) < 0.75, kinds


def test_crops_show_their_colour_family(demo):
    hits = total = 0
    for row in _rows(demo):
        shape, colour = json.loads(row[5]), json.loads(row[6])["type"]
        if shape["name"] != "rect":
            continue
        hsv = cv2.cvtColor(cv2.imread(str(demo.parent / row[0])), cv2.COLOR_BGR2HSV)
        x0, y0, x1, y1 = _box(shape)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        rx, ry = max((x1 - x0) // 8, 1), max((y1 - y0) // 8, 1)  # the central quarter of the box
        centre = hsv[max(cy - ry, 0):cy + ry, max(cx - rx, 0):cx + rx].reshape(-1, 3)
        angle = centre[:, 0] * (np.pi / 90)  # hue is circular: average it as an angle
        mean = np.degrees(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())) / 2 % 180
        total += 1
        hits += min(abs(mean - HUES[colour]), 180 - abs(mean - HUES[colour])) < 12
    assert total >= 10 and hits >= 0.85 * total, (hits, total)


def test_reuses_a_complete_dataset_and_regenerates_on_new_arguments(tmp_path, capsys):
    out = tmp_path / "d"
    csv_path = make_demo_dataset(out, n_images=3, image_size=SIZE, seed=3, progress=True)
    assert "3/3" in capsys.readouterr().err
    stamps = [p.stat().st_mtime_ns for p in (csv_path, out / "images/scene_0000.jpg")]
    assert make_demo_dataset(out, n_images=3, image_size=SIZE, seed=3) == csv_path
    assert capsys.readouterr().err == ""  # nothing regenerated, nothing printed
    assert [p.stat().st_mtime_ns for p in (csv_path, out / "images/scene_0000.jpg")] == stamps
    make_demo_dataset(out, n_images=2, image_size=SIZE, seed=3, progress=False)
    assert json.loads((out / "demo.json").read_text())["args"]["n_images"] == 2
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == ["scene_0000.jpg", "scene_0001.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left behind


def test_regenerates_an_incomplete_dataset(tmp_path):
    csv_path = make_demo_dataset(tmp_path / "d", n_images=2, image_size=SIZE, progress=False)
    (tmp_path / "d/images/scene_0001.jpg").unlink()
    make_demo_dataset(tmp_path / "d", n_images=2, image_size=SIZE, progress=False)
    assert (tmp_path / "d/images/scene_0001.jpg").is_file() and csv_path.is_file()


def test_refuses_to_replace_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a demo dataset"):
        make_demo_dataset(tmp_path / "mine", n_images=1, image_size=SIZE, progress=False)
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_images=0), "n_images"),
        (dict(image_size=(32, 200)), "image_size"),
        (dict(objects_per_image=(5, 2)), "objects_per_image"),
        (dict(image_size=(320, 200, 3)), "image_size"),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=f"{message}.*Received: {message}="):
        make_demo_dataset(tmp_path / "d", **{"image_size": SIZE, "progress": False, **kwargs})
