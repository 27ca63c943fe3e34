"""The two-head (or N-head) CNN: a shared trunk, one named softmax head per label.

The model takes raw pixels in the 0..255 range: scaling lives inside it, so the SavedModel and any
caller feed the same numbers CropSequence does.
"""

from __future__ import annotations

import re

import keras

from cropclf.config import ModelConfig
from cropclf.errors import ConfigError

# keras.applications trunks whose own preprocessing takes 0..255 pixels.
_SELF_SCALING = ("MobileNetV3Small", "MobileNetV3Large", "EfficientNetB", "EfficientNetV2", "ConvNeXt")


def output_name(head: str) -> str:
    """A head's output (layer) name: the head name with anything but ``[A-Za-z0-9_]`` as ``_``."""
    name = re.sub(r"\W", "_", head, flags=re.ASCII)
    return name if re.match(r"[A-Za-z]", name) else f"head_{name}"


def build_model(cfg: ModelConfig, image_size, num_classes: dict[str, int], seed: int = 0) -> keras.Model:
    """Builds the functional model ``image -> {head: probabilities}``.

    Args:
        cfg: trunk choice and width.
        image_size: ``(height, width)`` of the input crops.
        num_classes: head name -> number of classes, in head order.
        seed: seeds weight initialisation.
    """
    names = [output_name(h) for h in num_classes]
    if len(set(names)) != len(names):
        raise ConfigError(f"Head names must stay distinct as output names {names}. Received: {list(num_classes)}")
    inputs = keras.Input((*image_size, 3), name="image")
    features = _trunk(cfg, inputs, seed)
    outputs = {}
    for k, n in enumerate(num_classes.values()):
        x = keras.layers.Dropout(cfg.dropout, seed=seed + k, name=f"{names[k]}_dropout")(features)
        outputs[names[k]] = keras.layers.Dense(
            n, activation="softmax", dtype="float32", name=names[k],
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 100 + k))(x)
    return keras.Model(inputs, outputs, name=f"cropclf_{cfg.backbone}")


def _trunk(cfg: ModelConfig, inputs, seed: int):
    if cfg.backbone == "small":
        return _small_trunk(inputs, cfg.width, seed)
    factory = getattr(keras.applications, cfg.backbone, None)
    if factory is None or not callable(factory):
        known = sorted(n for n in dir(keras.applications) if n[0].isupper())
        raise ConfigError(f"`model.backbone` must be 'small' or a keras.applications model such as "
                          f"{known[:6]}... Received: {cfg.backbone!r}")
    x = inputs
    if not cfg.backbone.startswith(_SELF_SCALING):
        x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="scale_pixels")(x)
    trunk = factory(include_top=False, weights=None, input_shape=tuple(inputs.shape[1:]), pooling="avg")
    return trunk(x)


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
    """Adam, categorical cross-entropy and accuracy, keyed by each head's output name."""
    names = list(model.output.keys()) if isinstance(model.output, dict) else model.output_names
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss={n: keras.losses.CategoricalCrossentropy() for n in names},
        metrics={n: [keras.metrics.CategoricalAccuracy(name="accuracy")] for n in names},
    )
    return model
