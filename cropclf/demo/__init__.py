"""The built-in demo dataset: `scenes` draws, `dataset` writes the JPEGs and the VIA CSV."""

from cropclf.demo.dataset import make_demo_dataset
from cropclf.demo.scenes import DEMO_NAMES, DEMO_TYPES

__all__ = ["DEMO_NAMES", "DEMO_TYPES", "make_demo_dataset"]
