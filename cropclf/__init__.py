"""cropclf: train, evaluate and ship a classifier for the regions annotated in VIA exports."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import otherwise


def _raise_opencv_pixel_limit() -> None:
    """Lifts OpenCV's own pixel limit to at least ``CROPCLF_MAX_PIXELS`` (see `cropclf.data.images`).

    OpenCV refuses images over ``OPENCV_IO_MAX_IMAGE_PIXELS`` (default 2^30), which it reads once,
    when cv2 is imported, so this runs here, before any cropclf module imports cv2.
    """
    ours = os.environ.get("CROPCLF_MAX_PIXELS", "").strip()
    theirs = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "").strip()
    if ours.isdigit() and int(ours) > (int(theirs) if theirs.isdigit() else 1 << 30):
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = ours


_raise_opencv_pixel_limit()

__version__ = "0.1.0"

from cropclf.via import read_annotations  # noqa: E402
from cropclf.config import Config  # noqa: E402
from cropclf.errors import AnnotationError, CropclfError, ImageError, LabelError  # noqa: E402
from cropclf.data.labels import LabelMap, build_label_maps  # noqa: E402
from cropclf.data.splits import split_by_image  # noqa: E402

_LAZY = {  # these import TensorFlow/Keras; load them only when asked for
    "CropSequence": "cropclf.data.sequence",
    "PatchStore": "cropclf.data.patches",
    "build_model": "cropclf.model",
    "train": "cropclf.training",
    "evaluate_run": "cropclf.evaluation",
    "export_saved_model": "cropclf.serving.export",
    "make_demo_dataset": "cropclf.demo",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cropclf' has no attribute {name!r}")


__all__ = ["read_annotations", "Config", "CropclfError", "AnnotationError", "ImageError", "LabelError",
           "LabelMap", "build_label_maps", "split_by_image", *_LAZY]
