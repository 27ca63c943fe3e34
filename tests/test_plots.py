"""Learning curves: every head's column drawn, for one head as for several."""

import cv2
import numpy as np
import pytest

from cropclf.plots import learning_curves

TWO_HEADS = {"loss": [2.0, 1.0], "val_loss": [2.1, 1.2], "name_loss": [1.0, 0.5], "val_name_loss": [1.1, 0.6],
             "name_accuracy": [0.5, 0.8], "val_name_accuracy": [0.4, 0.7], "head_2_loss": [1.0, 0.5],
             "val_head_2_loss": [1.0, 0.6], "head_2_accuracy": [0.5, 0.9], "val_head_2_accuracy": [0.5, 0.8]}
ONE_HEAD = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7]}


@pytest.mark.parametrize("history, heads", [(TWO_HEADS, {"name": "name", "Name": "head_2"}),
                                            (ONE_HEAD, {"Class Name": "class_name"})], ids=["two", "one"])
def test_every_panel_has_both_curves(tmp_path, history, heads):
    # pytest turns warnings into errors: matplotlib warns "No artists with labels" for an empty panel
    learning_curves(history, heads, tmp_path / "curves.png")
    image = cv2.imread(str(tmp_path / "curves.png"))
    assert image is not None and image.shape[1] > image.shape[0] * 0.6 * len(heads)
    coloured = np.abs(image.astype(int) - image.mean(axis=2, keepdims=True)).max(axis=2) > 40
    assert coloured.mean() > 0.002  # lines drawn, not just axes
