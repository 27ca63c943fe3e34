"""The SavedModel's in-graph crop equals `cropclf.data.crops.canonical_crop` to within one grey level.

On a sharp black-and-white image a window one pixel off moves whole edges, so any difference in the
window maths shows up as tens of grey levels; the area/bilinear resize itself may round differently by 1.
"""

import numpy as np
import pytest
import tensorflow as tf

from cropclf.data.crops import canonical_crop, expand_box, integer_windows
from cropclf.serving.graph import crop_in_graph

IMAGE_HW = (480, 560)  # windows of boxes up to 700 px (910 px with the margin) fit the graph's bound
OUT_HW = (64, 48)
MARGIN = 0.15


def sharp_image(seed=0):
    """Black-and-white noise in 2x2-pixel cells: every window edge that moves by a pixel shows."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 2, (IMAGE_HW[0] // 2, IMAGE_HW[1] // 2, 3)).astype(np.uint8) * 255
    return cells.repeat(2, 0).repeat(2, 1)


def box_grid() -> list[np.ndarray]:
    """Every side length 1..700 (widths and heights varied independently), at integer and fractional
    offsets, inside the image and partly outside each edge; float32, as the signature takes them."""
    s = np.arange(1, 701, dtype=np.float64)
    other = (s * 37) % 700 + 1  # a permutation of 1..700: heights independent of widths
    height, width = IMAGE_HW
    grids = [
        np.column_stack([np.full_like(s, 7), np.full_like(s, 11), s, other]),  # integer, from inside
        np.column_stack([-np.floor(s / 3), height - np.floor(other / 2), s, other]),  # out left and bottom
        np.column_stack([width - s / 2 + 0.37, -other / 4 - 0.61, s + 0.25, other + 0.5]),  # out right and top
        np.column_stack([np.full_like(s, 30.999), np.full_like(s, 12.001), other + 0.999, s + 0.001]),
    ]
    return [within_graph_bound(g.astype(np.float32)) for g in grids]


def within_graph_bound(boxes):
    """The graph bounds a window to one image size beyond each side (memory): keeps boxes inside that."""
    height, width = IMAGE_HW
    windows = integer_windows(expand_box(boxes, MARGIN))
    inside = ((windows[:, 0] >= -width) & (windows[:, 2] <= 2 * width) & (windows[:, 1] >= -height)
              & (windows[:, 3] <= 2 * height))
    assert inside.mean() > 0.98, inside.mean()
    return boxes[inside]


def export_pixel_model(out_dir, image_size, margin, mode="stretch"):
    """Exports a "model" whose ``pixels`` head returns its input crop, flattened: the SavedModel's
    ``pixels_probabilities`` output is then exactly the crop its signatures cut (0..255, float)."""
    import keras

    from cropclf.config import Config
    from cropclf.serving.export import export_saved_model
    from cropclf.data.labels import LabelMap, output_keys

    key = output_keys(["pixels"])["pixels"]  # the head's output name, as the model and export name it
    h, w = image_size
    inputs = keras.Input((h, w, 3), name="image")
    model = keras.Model(inputs, {key: keras.layers.Flatten(name=key)(inputs)})
    maps = {"pixels": LabelMap("pixels", [f"p{i}" for i in range(h * w * 3)])}
    cfg = Config().replace(**{"crop.image_size": [h, w], "crop.margin": margin, "crop.resize": mode})
    return export_saved_model(model, maps, cfg, out_dir)


def served_crops(signature, image_size, **inputs) -> np.ndarray:
    """The crops a pixel model's signature cut, as uint8 ``[N, h, w, 3]``."""
    from cropclf.data.labels import output_keys

    flat = signature(**inputs)[output_keys(["pixels"])["pixels"] + "_probabilities"].numpy()
    return np.round(flat).astype(np.uint8).reshape(-1, *image_size, 3)


def assert_within_one_grey_level(got, want, boxes):
    worst = np.abs(got.astype(int) - want.astype(int)).max(axis=(1, 2, 3))
    bad = np.flatnonzero(worst > 1)
    assert not bad.size, [(boxes[i].tolist(), int(worst[i])) for i in bad[:10]] + [f"{bad.size} boxes in all"]


@pytest.mark.slow
@pytest.mark.parametrize("mode, grids", [("stretch", [0, 2]), ("letterbox", [1, 3])])
def test_in_graph_crop_equals_canonical_crop_on_every_box_size(mode, grids):
    """Each mode: every side length 1..700 at an integer and a fractional offset, one set partly outside."""
    image, boxes = sharp_image(), np.concatenate([box_grid()[k] for k in grids])

    @tf.function
    def crop_all(image, boxes):
        return tf.map_fn(lambda b: crop_in_graph(image, b, OUT_HW, MARGIN, mode, 0), boxes,
                         fn_output_signature=tf.TensorSpec([*OUT_HW, 3], tf.uint8), parallel_iterations=16)

    got = crop_all(tf.constant(image), tf.constant(boxes)).numpy()
    want = np.stack([canonical_crop(image, b, OUT_HW, MARGIN, mode) for b in boxes])
    assert_within_one_grey_level(got, want, boxes)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_classify_regions_crops_as_canonical_crop(tmp_path, mode):
    """End to end: the exported signature, loaded with tf.saved_model.load, on a subset of the boxes."""
    image = sharp_image(1)
    boxes = np.concatenate([grid[::23] for grid in box_grid()])
    loaded = tf.saved_model.load(str(export_pixel_model(tmp_path / "sm", OUT_HW, MARGIN, mode)))
    got = served_crops(loaded.signatures["classify_regions"], OUT_HW, image=tf.constant(image),
                       boxes=tf.constant(boxes))
    want = np.stack([canonical_crop(image, b, OUT_HW, MARGIN, mode) for b in boxes])
    assert_within_one_grey_level(got, want, boxes)
