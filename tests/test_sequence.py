import math

import numpy as np
import pytest
# Private on purpose: no public Keras API runs a PyDataset's workers as fit does; this is fit's own adapter.
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from cropclf.config import AugmentConfig, CropConfig
from cropclf.data.crops import canonical_crop
from cropclf.errors import CropclfError, ImageError
from cropclf.data.images import load_image
from cropclf.data.labels import build_label_maps
from cropclf.data.patches import PatchStore
from cropclf.data.sequence import CropSequence

CROP = CropConfig(image_size=(24, 40), margin=0.1)  # non-square output


def make(frame, **kw):
    maps = build_label_maps(frame, ["name", "type"])
    kw.setdefault("progress", False)
    return CropSequence(frame, maps, crop=kw.pop("crop", CROP), **kw)


def names_in(seq, y):
    return [seq.label_maps["name"].classes[i] for i in y["name"].argmax(axis=1)]


def run_epochs(seq, epochs):
    """Batches as Keras' own adapter delivers them (threads or processes), epoch by epoch."""
    adapter = PyDatasetAdapter(seq, shuffle=False)
    out = []
    adapter.on_epoch_end()  # fit calls this once before the first epoch
    for _ in range(epochs):
        adapter.on_epoch_begin()
        out.append([batch for batch in adapter.get_numpy_iterator()])
        adapter.on_epoch_end()
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 11])
def test_len_is_ceiling_and_last_batch_short(tiny_images, batch_size):
    seq = make(tiny_images, batch_size=batch_size)
    assert len(seq.slots) == 10  # 12 regions, 2 cannot be cropped
    assert len(seq) == math.ceil(10 / batch_size)
    sizes = [len(seq[i][0]) for i in range(len(seq))]
    assert sum(sizes) == 10 and all(s == batch_size for s in sizes[:-1])
    with pytest.raises(IndexError, match="out of range"):
        seq[len(seq)]


def test_uncroppable_regions_are_reported(tiny_images):
    seq = make(tiny_images, batch_size=4)
    reasons = [p.reason for p in seq.skipped]
    assert len(reasons) == 2
    assert any("smaller than min_size" in r for r in reasons) and any("wholly outside" in r for r in reasons)
    assert "2 region(s) left out, 10 used" in seq.report()


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("workers, mp", [(1, False), (2, False), (2, True)])
def test_every_region_once_per_epoch(tiny_images, augment, workers, mp):
    seq = make(tiny_images, batch_size=3, augment=augment, seed=5, workers=workers, use_multiprocessing=mp)
    epochs = run_epochs(seq, 2)
    expected = sorted(seq.label_maps["name"].classes[i] for i in seq.labels["name"])
    for batches in epochs:
        seen = [n for _, y in batches for n in names_in(seq, y)]
        assert sorted(seen) == expected


def test_same_batches_whatever_the_workers(tiny_images):
    runs = []
    for workers, mp in [(1, False), (2, False), (2, True)]:
        seq = make(tiny_images, batch_size=3, augment=True, seed=11, workers=workers, use_multiprocessing=mp)
        runs.append(run_epochs(seq, 2))
    for other in runs[1:]:
        for e in range(2):
            for (xa, ya), (xb, yb) in zip(runs[0][e], other[e]):
                np.testing.assert_array_equal(xa, xb)
                np.testing.assert_array_equal(ya["name"], yb["name"])
    first, second = runs[0]
    assert not all(np.array_equal(a[1]["name"], b[1]["name"]) for a, b in zip(first, second))  # new order


def test_epochs_differ_and_extra_calls_change_nothing(tiny_images):
    seq = make(tiny_images, batch_size=4, augment=True, seed=1)
    a = seq[0]
    for _ in range(3):
        seq[1], seq[0]  # noqa: B018 (Keras peeks at batches before training)
    np.testing.assert_array_equal(seq[0][0], a[0])
    seq.on_epoch_end()
    assert not np.array_equal(seq[0][0], a[0])
    other = make(tiny_images, batch_size=4, augment=True, seed=2)
    assert not np.array_equal(other[0][0], a[0])


def test_eval_crop_equals_canonical_crop(tiny_images):
    seq = make(tiny_images, batch_size=16)
    X, _ = seq[0]
    assert X.shape == (10, 24, 40, 3) and X.dtype == np.float32
    for k, p in enumerate(seq.order()):
        row = tiny_images.loc[seq.index[p]]
        ref = canonical_crop(load_image(row["path"]), row[["x", "y", "width", "height"]].to_numpy(float),
                             CROP.image_size, CROP.margin)
        diff = np.abs(X[k] - ref)
        assert diff.max() <= 1.0


def test_letterbox_mode_pads(tiny_images):
    crop = CropConfig(image_size=(32, 32), margin=0.0, resize="letterbox", pad_value=0)
    frame = tiny_images.iloc[[7]]  # a 50x20 box: wide
    X, _ = make(frame, crop=crop, batch_size=1)[0]
    assert X[0, 0].max() == 0 and X[0, 16].max() > 0


def sharp_frame(tmp_path, box):
    """One black/white noise image (101x153) with one region on it."""
    from conftest import regions_frame, write_image

    image = (np.random.default_rng(3).integers(0, 2, (101, 153, 3)) * 255).astype(np.uint8)
    path = str(write_image(tmp_path / "sharp.png", image))
    x, y, w, h = box
    return image, regions_frame([{"path": path, "x": x, "y": y, "width": w, "height": h, "name": "a", "type": "b"}])


@pytest.mark.parametrize("room", [True, False])
def test_jitter_takes_context_from_real_pixels(tmp_path, monkeypatch, room):
    # A small box in the middle of a sharp image (its patch is at full resolution): every jittered crop
    # must equal the same window warped straight out of the whole image. Without jitter room in the
    # patch (room=False: a store built without reach), the window leaves the patch and the crop takes
    # replicated edge pixels instead: the comparison must then fail, or this test proves nothing.
    import cv2

    from cropclf.data import sequence
    from cropclf.data.crops import fit_size, output_to_source

    image, frame = sharp_frame(tmp_path, (60.4, 40.7, 12.3, 9.6))
    augment = AugmentConfig(shift=0.1, scale=0.2, hflip=0, rotate=0, color=0, blur=0)  # jitter alone
    store = None if room else PatchStore(frame, CROP.image_size, CROP.margin, 0.0, progress=False)
    seq = make(frame, batch_size=1, augment=augment, store=store)
    windows, real = [], sequence.jitter_window

    def spy(*args):  # records the window each crop is cut from
        windows.append(real(*args))
        return windows[-1]

    monkeypatch.setattr(sequence, "jitter_window", spy)
    worst = 0.0
    for epoch in range(40):
        seq.set_epoch(epoch)
        X = seq[0][0][0]
        window = windows[-1]
        th, tw = fit_size((window[3], window[2]), CROP.image_size, "stretch")
        M = output_to_source(window, (th, tw))
        ref = cv2.warpAffine(image, M, (tw, th), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REPLICATE)
        worst = max(worst, float(np.abs(X - ref).max()))
    assert len(set(map(tuple, windows))) == 40  # really jittered
    if room:
        assert worst <= 1
    else:
        assert worst > 100


@pytest.mark.parametrize("transform, applied", [
    ("InvertImg", lambda X: 255 - X),
    ("VerticalFlip", lambda X: X[:, ::-1]),
])
def test_user_compose(tiny_images, transform, applied):
    """A user's Compose replaces the presets: the default box jitter, then exactly that transform."""
    import albumentations as A

    jitter_only = AugmentConfig(hflip=0, rotate=0, color=0, blur=0)  # default shift and scale
    plain = make(tiny_images, batch_size=4, augment=jitter_only, seed=0)
    user = make(tiny_images, batch_size=4, augment=A.Compose([getattr(A, transform)(p=1.0)]), seed=0)
    for i in range(len(plain)):
        (X0, y0), (X1, y1) = plain[i], user[i]
        assert X1.shape == X0.shape and X1.shape[1:] == (24, 40, 3)
        np.testing.assert_array_equal(y1["name"], y0["name"])  # same regions, same order
        np.testing.assert_array_equal(X1, applied(X0))
        assert not np.array_equal(X1, X0)  # the transform changes these crops


def test_class_weights_become_sample_weights(tiny_images):
    seq = make(tiny_images, batch_size=5, class_weights={"name": np.arange(12.0), "type": np.array([1.0, 3.0])})
    X, y, w = seq[0]
    np.testing.assert_allclose(w["type"], np.where(y["type"][:, 1] == 1, 3.0, 1.0))


class Exploding(PatchStore):
    error = None

    def patch(self, s):
        if self.error is not None:
            raise self.error
        return super().patch(s)


@pytest.mark.parametrize("workers, mp", [(1, False), (2, False), (2, True)])
def test_batch_errors_name_the_region(tiny_images, workers, mp):
    store = Exploding(tiny_images, CROP.image_size, CROP.margin, CROP.margin, progress=False)
    store.error = ImageError("patch bytes unreadable. Received: 0 bytes")
    seq = make(tiny_images, batch_size=4, store=store, workers=workers, use_multiprocessing=mp)
    with pytest.raises(ImageError, match=r"img \d\.png \(row \d+\).*: building batch 0 of epoch \d+: patch bytes"):
        run_epochs(seq, 1)


@pytest.mark.parametrize("workers, mp", [(1, False), (2, False), (2, True)])
def test_programming_errors_are_not_data_errors(tiny_images, workers, mp):
    store = Exploding(tiny_images, CROP.image_size, CROP.margin, CROP.margin, progress=False)
    store.error = ZeroDivisionError("a bug")
    seq = make(tiny_images, batch_size=4, store=store, workers=workers, use_multiprocessing=mp)
    with pytest.raises(ZeroDivisionError, match="a bug") as info:
        run_epochs(seq, 1)
    assert not isinstance(info.value, CropclfError)


def test_store_decodes_each_image_once(tiny_images, monkeypatch):
    import cropclf.data.patches as patches

    calls = []
    real = patches.load_image
    monkeypatch.setattr(patches, "load_image", lambda p, **kw: calls.append(p) or real(p, **kw))
    store = PatchStore(tiny_images, CROP.image_size, CROP.margin, 0.5, progress=False)
    assert sorted(calls) == sorted(set(tiny_images["path"]))
    seq = make(tiny_images, batch_size=4, store=store, augment=True)
    for e in range(3):
        seq.set_epoch(e)
        [seq[i] for i in range(len(seq))]
    assert len(calls) == 3


def test_store_spills_to_disk_when_over_budget(tiny_images):
    store = PatchStore(tiny_images, CROP.image_size, CROP.margin, 0.5, memory_mb=0, progress=False)
    assert store.on_disk
    seq = make(tiny_images, batch_size=16, store=store)
    in_memory = make(tiny_images, batch_size=16, store=PatchStore(tiny_images, CROP.image_size, CROP.margin, 0.5,
                                                                progress=False))
    np.testing.assert_array_equal(seq[0][0], in_memory[0][0])
    store.close()


def test_missing_image_regions_are_left_out_and_reported(tiny_images, tmp_path):
    frame = tiny_images.copy()
    frame.loc[frame.index[:4], "path"] = str(tmp_path / "gone.jpg")
    seq = make(frame, batch_size=4)
    assert len(seq.slots) == 6
    assert sum("missing or unreadable" in p.reason for p in seq.skipped) == 4


def test_unlabelled_regions_are_reported(tiny_images):
    frame = tiny_images.copy()
    frame.loc[frame.index[0], "type"] = ""
    seq = make(frame, batch_size=4)
    assert any("unlabelled for head(s) ['type']" in p.reason for p in seq.skipped)


def test_replica_padding_keeps_every_region_once_with_zero_weight(tiny_images):
    seq = make(tiny_images, batch_size=4, replicas=3)
    real = 0
    for i in range(len(seq)):
        X, y, w = seq[i]
        assert len(X) % 3 == 0 and len(X) == len(w["name"]) == len(y["type"])
        real += int(w["name"].sum())
        assert set(np.unique(w["type"])) <= {0.0, 1.0}
    assert real == len(seq.slots) == 10
