"""The two-head (or N-head) CNN: a shared trunk, one softmax head per label, named by its output key.

The model takes raw pixels in the 0..255 range: scaling lives inside it, so the SavedModel and any
caller feed the same numbers CropSequence does.
"""

from __future__ import annotations

import re

import keras

from cropclf.config import ModelConfig
from cropclf.errors import ConfigError
from cropclf.data.labels import output_keys

# keras.applications trunks whose own preprocessing takes 0..255 pixels.
_SELF_SCALING = ("MobileNetV3Small", "MobileNetV3Large", "EfficientNetB", "EfficientNetV2", "ConvNeXt")


def build_model(cfg: ModelConfig, image_size, num_classes: dict[str, int], seed: int = 0) -> keras.Model:
    """Builds the functional model ``image -> {output key: probabilities}``.

    Each head's output (and its Dense layer) is named by its output key (`cropclf.data.labels.output_keys`),
    whatever the head's own name holds. The trunk is a nested model named ``trunk`` and the head's
    dropout layer is ``<key>-dropout``, so no head name can collide with another layer's.

    Args:
        cfg: trunk choice and width.
        image_size: ``(height, width)`` of the input crops.
        num_classes: head name -> number of classes, in head order.
        seed: seeds weight initialisation.

    Raises:
        ConfigError: an unknown backbone, or an input smaller than the backbone accepts.
    """
    keys = list(output_keys(num_classes).values())
    inputs = keras.Input((*image_size, 3), name="image")
    features = trunk(cfg, image_size, seed)(inputs)
    outputs = {}
    for k, n in enumerate(num_classes.values()):
        x = keras.layers.Dropout(cfg.dropout, seed=seed + k, name=f"{keys[k]}-dropout")(features)
        outputs[keys[k]] = keras.layers.Dense(
            n, activation="softmax", dtype="float32", name=keys[k],
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 100 + k))(x)
    return keras.Model(inputs, outputs, name=f"cropclf_{cfg.backbone}")


def check_backbone(cfg: ModelConfig, image_size) -> None:
    """Raises `ConfigError` now, before any data work, if `trunk` would refuse ``cfg`` or ``image_size``."""
    if cfg.backbone == "small":
        _check_small(image_size)
    else:
        trunk(cfg, image_size, 0)  # keras.applications check sizes only while building: build once, discard


# The small trunk's stem halves the input (rounding up), then three poolings halve it (rounding down):
# 15 px is the least that leaves one pixel at the end.
SMALL_MIN_SIZE = 15


def _check_small(image_size) -> None:
    if min(image_size) < SMALL_MIN_SIZE:
        raise ConfigError(f"Backbone small needs input crops of at least {SMALL_MIN_SIZE}x{SMALL_MIN_SIZE} px; "
                          f"crop.image_size is {image_size[0]}x{image_size[1]}. Pass a larger --image-size. "
                          f"Received: {tuple(image_size)}")


def trunk(cfg: ModelConfig, image_size, seed: int = 0) -> keras.Model:
    """The shared feature extractor ``pixels (0..255) -> features``, as one nested model."""
    inputs = keras.Input((*image_size, 3), name="pixels")
    if cfg.backbone == "small":
        _check_small(image_size)
        return keras.Model(inputs, _small_trunk(inputs, cfg.width, seed), name="trunk")
    factory = getattr(keras.applications, cfg.backbone, None)
    if factory is None or not callable(factory) or not cfg.backbone[:1].isupper():
        known = sorted(n for n in dir(keras.applications) if n[0].isupper())
        raise ConfigError(f"`model.backbone` must be 'small' or a keras.applications model such as "
                          f"{known[:6]}... Received: {cfg.backbone!r}")
    x = inputs
    if not cfg.backbone.startswith(_SELF_SCALING):
        x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale_pixels")(x)
    try:
        features = factory(include_top=False, weights=None, input_shape=(*image_size, 3), pooling="avg")
    except ValueError as e:  # keras.applications check the input size themselves: say it in our terms
        least = re.search(r"at least (\d+)x(\d+)", str(e))
        if least is None and "input" not in str(e).lower():
            raise
        minimum = f"{least[1]}x{least[2]}" if least else "larger"
        raise ConfigError(f"Backbone {cfg.backbone} needs input crops of at least {minimum} px; "
                          f"crop.image_size is {image_size[0]}x{image_size[1]}. Pass a larger --image-size "
                          f"or another --backbone. Received: {e}") from None
    return keras.Model(inputs, features(x), name="trunk")


def _small_trunk(inputs, width: int, seed: int):
    """Conv-BN-ReLU blocks, halving resolution and doubling width; fast on two CPU cores."""
    init = iter(range(seed * 1000, seed * 1000 + 100))

    def conv(x, filters, stride=1, name=""):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=name,
                                kernel_initializer=keras.initializers.HeNormal(seed=next(init)))(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # few steps per run: track fast
        return keras.layers.ReLU(name=f"{name}_relu")(x)

    x = keras.layers.Rescaling(1 / 255.0, name="scale_pixels")(inputs)
    x = conv(x, width, stride=2, name="stem")
    for block, mult in enumerate((1, 2, 4)):
        x = conv(x, width * mult, name=f"block{block + 1}_conv1")
        x = conv(x, width * mult, name=f"block{block + 1}_conv2")
        x = keras.layers.MaxPooling2D(name=f"block{block + 1}_pool")(x)
    x = conv(x, width * 8, name="block4_conv1")
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    """Adam, categorical cross-entropy and accuracy, keyed by each head's output key."""
    names = list(model.output.keys()) if isinstance(model.output, dict) else model.output_names
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={n: keras.losses.CategoricalCrossentropy() for n in names},
        metrics={n: [keras.metrics.CategoricalAccuracy(name="accuracy")] for n in names},
    )
    return model
