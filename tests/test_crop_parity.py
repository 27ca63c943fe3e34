"""Every crop that is not jittered is `crops.canonical_crop`'s, the crop evaluation and serving use.

Validation during training drives the checkpoint choice, early stopping and LR reduction, so its
crops must be the ones the exported model will see. Sharp-edged images (black/white noise, a
checkerboard) make any sub-pixel shift or extra interpolation show as a large grey-level error.
"""

import numpy as np
import pytest

from conftest import regions_frame, write_image
from cropclf.config import AugmentConfig, Config, CropConfig
from cropclf.data.crops import canonical_crop
from cropclf.data.loading import prepare
from cropclf.data.images import load_image
from cropclf.data.labels import build_label_maps
from cropclf.data.sequence import CropSequence

SIDES = [2, 2.5, 3, 4.7, 9, 16, 23.4, 40, 61.5, 97, 150, 333.3]  # tiny to several times the image
NO_AUGMENT = AugmentConfig(shift=0, scale=0, hflip=0, rotate=0, color=0, blur=0)  # enabled, but a no-op


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """Black/white noise (71x103) and a 3-px checkerboard (90x64), and boxes of every size on them:
    integer and fractional, inside, and partly outside each edge."""
    folder = tmp_path_factory.mktemp("sharp")
    noise = (np.random.default_rng(1).integers(0, 2, (71, 103, 3)) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:90, :64]
    checker = np.repeat((((yy // 3 + xx // 3) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    checker[..., 1] = 255 - checker[..., 1]  # channels differ
    rows = []
    for name, image in [("noise", noise), ("checker", checker)]:
        path = str(write_image(folder / f"{name}.png", image))
        h, w = image.shape[:2]
        for bw, bh in [(a, b) for i, a in enumerate(SIDES) for b in SIDES[i % 3::3]]:  # 48 shapes
            for x, y in [(0, 0), (13.4, 7.8), (-bw / 3 - 0.3, -bh / 4 - 0.6), (w - bw / 2 + 0.2, h - bh / 3)]:
                rows.append({"path": path, "x": x, "y": y, "width": bw, "height": bh,
                             "name": f"{name}{len(rows)}", "type": name})
    return regions_frame(rows)


def assert_canonical(seq, frame, crop):
    images = {p: load_image(p) for p in set(frame["path"])}
    assert len(seq.slots) == len(frame)  # nothing left out: every box above is croppable
    worst = 0.0
    for i in range(len(seq)):
        X = seq[i][0]
        for k, p in enumerate(seq.order()[i * seq.batch_size:(i + 1) * seq.batch_size]):
            row = frame.loc[seq.index[p]]
            ref = canonical_crop(images[row["path"]], row[["x", "y", "width", "height"]].to_numpy(float),
                                 crop.image_size, crop.margin, crop.resize, crop.pad_value)
            diff = np.abs(X[k] - ref).max()
            assert diff <= 1, (f"{row['row']} box {tuple(row[['x', 'y', 'width', 'height']])}: "
                               f"{diff:g} grey levels from canonical_crop")
            worst = max(worst, diff)
    return worst


@pytest.mark.parametrize("crop", [CropConfig(image_size=(24, 40), margin=0.15),
                                  CropConfig(image_size=(24, 40), margin=0.15, resize="letterbox", pad_value=128),
                                  CropConfig(image_size=(16, 16), margin=0.0, pad_value=255)],
                         ids=["stretch", "letterbox", "square-no-margin"])
def test_evaluation_crops_equal_canonical_crop(sharp, crop):
    maps = build_label_maps(sharp, ["name", "type"])
    seq = CropSequence(sharp, maps, batch_size=100, crop=crop, augment=False, progress=False)
    assert_canonical(seq, sharp, crop)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_training_and_validation_share_a_store_and_both_crop_canonically(sharp, resize):
    # as training.py builds them: one store for the whole frame, training regions with jitter room
    cfg = Config().replace(**{"crop.image_size": (24, 40), "crop.resize": resize, "crop.pad_value": 90})
    paths = sorted(set(sharp["path"]))
    assignment = {paths[0]: "train", paths[1]: "val"}
    data = prepare(cfg, assignment=assignment, log=lambda *_: None, progress=False, frame=sharp)
    plain = prepare(cfg.replace(**{"augment.enabled": False}), assignment=assignment, log=lambda *_: None,
                    progress=False, frame=sharp)
    assert data.store.nbytes > plain.store.nbytes  # the training regions' patches have jitter room
    plain.store.close()
    for split, augment in [("val", False), ("train", False), ("train", NO_AUGMENT)]:
        frame = data.split(split)
        seq = CropSequence(frame, data.label_maps, 64, cfg.crop, augment, store=data.store, progress=False)
        assert_canonical(seq, frame, cfg.crop)
    data.store.close()
