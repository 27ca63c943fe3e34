"""PatchStore: bounded patches for any box, jitter room that covers the jitter, where the spill goes."""

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import regions_frame, write_image
from cropclf.config import AugmentConfig, Config, CropConfig
from cropclf.data.crops import canonical_crop, jitter_reach, jitter_window
from cropclf.data.loading import prepare
from cropclf.errors import ConfigError
from cropclf.data.labels import build_label_maps
from cropclf.data.patches import PatchStore
from cropclf.data.sequence import CropSequence

QUIET = {"log": lambda *_: None, "progress": False}


@pytest.fixture(scope="module")
def tall_image(tmp_path_factory):
    """A 500x460 black/white noise image: room for boxes of every aspect ratio."""
    image = (np.random.default_rng(2).integers(0, 2, (500, 460, 3)) * 255).astype(np.uint8)
    return image, str(write_image(tmp_path_factory.mktemp("tall") / "tall.png", image))


def frame_of(path, boxes):
    return regions_frame([{"path": path, "x": x, "y": y, "width": w, "height": h, "name": f"r{k}", "type": "a"}
                          for k, (x, y, w, h) in enumerate(boxes)])


# thin, tall, wide, huge, tiny, partly outside: (x, y, w, h)
ANY_ASPECT = [(100, -1000, 20, 4000), (-1000, 100, 4000, 20), (-300, -400, 3000, 3500), (200.5, 300.2, 2.5, 3),
              (10.7, 20.3, 3.2, 470.9), (50, 50, 400, 7.5), (-50.5, 480, 600, 90)]


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("reach", [0.0, jitter_reach(0.08, 0.15)])
def test_patches_are_bounded_for_any_aspect_ratio(tall_image, resize, reach):
    image, path = tall_image
    frame = frame_of(path, ANY_ASPECT)
    oh, ow = 64, 64
    store = PatchStore(frame, (oh, ow), 0.15, reach, resize, progress=False)
    assert len(store) == len(ANY_ASPECT)
    limit = np.array([oh + 2 * math.ceil(reach * oh), ow + 2 * math.ceil(reach * ow)])
    for s, box in enumerate(ANY_ASPECT):
        assert np.all(store.shapes[s] <= limit), f"box {box}: patch {store.shapes[s]} beyond {limit}"
        # and bounding it changed nothing in the crop evaluation uses
        ref = canonical_crop(image, box, (oh, ow), 0.15, resize)
        assert np.abs(store.canonical(s).astype(int) - ref).max() <= 1, f"box {box}"
    if reach > 0:  # the case: a 20x4000 box at 64x64 takes what a square box takes, ~21 KB
        assert store.patch(0).nbytes <= (64 + 2 * 10) ** 2 * 3


class Extremes:
    """Stands in for the RNG `jitter_window` draws from: always the end of the range ``signs`` pick."""

    def __init__(self, sx, sy, ss):
        self.sx, self.sy, self.ss = sx, sy, ss

    def uniform(self, low, high, size=None):
        if size == 2:
            return np.array([high if self.sx > 0 else low, high if self.sy > 0 else low])
        return high if self.ss > 0 else low


@pytest.mark.parametrize("shift, scale", [(0.08, 0.15), (0.2, 0.0), (0.0, 0.3), (0.25, 0.5)])
@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_extreme_jitter_stays_inside_the_patch(tall_image, shift, scale, resize):
    # every corner of the jitter's range, on boxes whose whole-pixel window is up to ~1 px wider than
    # the box grown by the margin (fractional sides and offsets): the jittered window, which the crop
    # reads, must lie inside the patch, so jitter takes its context from real pixels, not the border mode
    _, path = tall_image
    sides = [2.2, 3, 5.5, 9.9, 13.01, 17.5, 30.6, 63.3, 64, 101.7, 250.4]
    boxes = [(100.6 + k, 150.3 + k / 3, w, h) for k, (w, h) in enumerate(itertools.product(sides, sides[::2]))]
    frame = frame_of(path, boxes)
    crop = CropConfig(image_size=(24, 40), margin=0.15, resize=resize)
    augment = AugmentConfig(shift=shift, scale=scale)
    seq = CropSequence(frame, build_label_maps(frame, ["name", "type"]), crop=crop, augment=augment, progress=False)
    store = seq.store
    assert len(seq.slots) == len(boxes)
    for s in seq.slots:
        ph, pw = store.shapes[s]
        for signs in itertools.product([-1, 1], repeat=3):
            window = jitter_window(store.margin_boxes[s], Extremes(*signs), shift, scale)
            x, y, w, h = store.to_patch(s, window)
            assert x >= -1e-9 and y >= -1e-9 and x + w <= pw + 1e-9 and y + h <= ph + 1e-9, \
                (f"box {boxes[s]}, jitter {signs}: window {(x, y, w, h)} leaves the {pw}x{ph} patch")


def test_spill_file_goes_to_the_configured_folder(tall_image, tmp_path):
    _, path = tall_image
    frame = frame_of(path, ANY_ASPECT[:3])
    spill = tmp_path / "spill here"
    cfg = Config().replace(**{"data.cache_dir": str(spill), "data.cache_memory_mb": 0})
    data = prepare(cfg, assignment={path: "train"}, frame=frame, **QUIET)
    try:
        assert data.store.on_disk and Path(data.store._tmp.name).parent == spill
        assert "file on disk" in data.store.describe()
    finally:
        data.store.close()


def test_spill_folder_that_cannot_be_made_is_a_config_error(tall_image, tmp_path):
    _, path = tall_image
    (tmp_path / "a file").write_text("not a folder")
    cfg = Config().replace(**{"data.cache_dir": str(tmp_path / "a file" / "sub"), "data.cache_memory_mb": 0})
    with pytest.raises(ConfigError, match=r"patch cache folder .*a file.*data.cache_dir.*Received"):
        prepare(cfg, assignment={path: "train"}, frame=frame_of(path, ANY_ASPECT[:1]), **QUIET)


def test_old_config_files_keep_cache_memory_mb():
    # the key moved from `augment` to `data`; run directories written before keep loading
    assert Config.from_dict({"augment": {"cache_memory_mb": 64}}).data.cache_memory_mb == 64
    assert Config().replace(**{"augment.cache_memory_mb": 32}).data.cache_memory_mb == 32
    assert Config.from_dict(Config().to_dict()) == Config()
    with pytest.raises(ConfigError, match=r"disagree.*Received: 64 and 32"):
        Config.from_dict({"augment": {"cache_memory_mb": 64}, "data": {"cache_memory_mb": 32}})


def test_order_is_built_once_per_epoch(tiny_images):
    seq = CropSequence(tiny_images, build_label_maps(tiny_images, ["name", "type"]), batch_size=2, shuffle=True,
                       seed=4, progress=False, crop=CropConfig(image_size=(16, 16)))
    reference = {e: np.random.default_rng([4, 1, e]).permutation(len(seq.slots)) for e in range(6)}
    assert seq.order(3) is seq.order(3)  # cached: a batch costs O(batch size), not a new permutation
    # threads asking for different epochs at once each get their epoch's order, from (seed, epoch) alone
    epochs = [e % 6 for e in range(600)]
    with ThreadPoolExecutor(8) as pool:
        orders = list(pool.map(seq.order, epochs))
    for e, order in zip(epochs, orders):
        np.testing.assert_array_equal(order, reference[e])
    seq.set_epoch(5)
    X, y = seq[0]
    names = [seq.label_maps["name"].classes[i] for i in y["name"].argmax(1)]
    assert names == [tiny_images.loc[seq.index[p], "name"] for p in reference[5][:2]]


@pytest.mark.parametrize("pad_value", [0, 200])
def test_large_windows_take_the_chunked_path_to_the_same_patches(tall_image, monkeypatch, pad_value):
    from cropclf.data import patches

    _, path = tall_image
    frame = frame_of(path, ANY_ASPECT)
    one_pass = PatchStore(frame, (24, 40), 0.15, 0.2, pad_value=pad_value, progress=False)
    monkeypatch.setattr(patches, "INTEGRAL_MAX_PIXELS", 0)  # as if every window were huge
    chunked = PatchStore(frame, (24, 40), 0.15, 0.2, pad_value=pad_value, progress=False)
    assert one_pass.nbytes == chunked.nbytes
    assert np.abs(one_pass.buffer.astype(int) - chunked.buffer).max() <= 1
