"""Augmentation presets for crops (albumentations), one factory with a training switch.

The box jitter (shift and scale of the crop window, drawing new context from real pixels) is not
here: it happens in `CropSequence` before the crop is resampled. This module adds what suits a crop
once it is cut: flips, a small rotation, colour, blur and sensor noise.
"""

from __future__ import annotations



import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from cropclf.config import AugmentConfig  # noqa: E402


def build_augmentation(cfg: AugmentConfig, seed: int | None = None) -> A.Compose | None:
    """Returns the training-time photometric/geometric pipeline, or ``None`` when disabled."""
    if not cfg.enabled:
        return None
    transforms = []
    if cfg.hflip > 0:
        transforms.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.rotate > 0:
        transforms.append(A.Affine(rotate=(-cfg.rotate, cfg.rotate), border_mode=cv2.BORDER_REFLECT_101, p=0.5))
    if cfg.color > 0:
        c = cfg.color
        transforms.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=c / 10, p=0.8))
    if cfg.blur > 0:
        transforms.append(A.OneOf([
            A.GaussianBlur(blur_limit=(3, 3)),
            A.GaussNoise(std_range=(0.02, 0.06)),
            A.ImageCompression(quality_range=(50, 90)),
        ], p=cfg.blur))
    return A.Compose(transforms, seed=seed, strict=True)
