"""The two-head (or N-head) CNN: a shared trunk, one softmax head per label, named by its output key.

The model takes raw pixels in the 0..255 range: scaling lives inside it, so the SavedModel and any
caller feed the same numbers CropSequence does.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from pathlib import Path

import keras
import numpy as np

from cropclf.config import Config, ModelConfig, describe_trunk, weights_source
from cropclf.errors import ConfigError
from cropclf.data.labels import output_keys

# What each keras.applications family's ``preprocess_input`` does to 0..255 RGB pixels, rebuilt from
# Keras's layers so the SavedModel needs nothing else (checked against preprocess_input in the tests):
# "caffe": RGB -> BGR, minus the ImageNet mean; "tf": to [-1, 1]; "torch": to [0, 1], then the ImageNet
# mean and standard deviation per channel; "own": the model rescales itself (include_preprocessing).
_PREPROCESSING = {
    "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "mobilenet": "tf", "mobilenet_v2": "tf", "resnet_v2": "tf", "inception_v3": "tf",
    "inception_resnet_v2": "tf", "xception": "tf", "nasnet": "tf",
    "densenet": "torch",
    "mobilenet_v3": "own", "efficientnet": "own", "efficientnet_v2": "own", "convnext": "own",
}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode="caffe"
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # mode="torch"

def build_model(cfg: ModelConfig, image_size, num_classes: dict[str, int], seed: int = 0) -> keras.Model:
    """Builds the functional model ``image -> {output key: probabilities}``.

    Each head's output (and its Dense layer) is named by its output key (`cropclf.data.labels.output_keys`),
    whatever the head's own name holds. The trunk is a nested model named ``trunk`` and the head's
    dropout layer is ``<key>-dropout``, so no head name can collide with another layer's.

    With ``cfg.weights`` set (pretrained or transferred), the trunk starts from those weights and its
    BatchNorm layers are frozen, which runs them in inference mode (their learned statistics) in every
    fine-tuning stage, as Keras's transfer-learning guide prescribes; the heads are always new. (The
    guide's ``base_model(x, training=False)`` does not do it here: Keras 3's functional models pass fit's
    ``training=True`` over it, keras-team/keras#20285.)

    Args:
        cfg: trunk choice, width and initial weights.
        image_size: ``(height, width)`` of the input crops.
        num_classes: head name -> number of classes, in head order.
        seed: seeds weight initialisation.

    Raises:
        ConfigError: an unknown backbone, an input smaller than the backbone accepts, or weights that
            cannot be had or do not fit the backbone.
    """
    keys = list(output_keys(num_classes).values())
    inputs = keras.Input((*image_size, 3), name="image")
    shared = trunk(cfg, image_size, seed)
    if cfg.weights not in (None, "imagenet"):
        load_trunk_weights(shared, cfg, cfg.weights)
    if cfg.weights is not None:
        for layer in _body(shared).layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    features = shared(inputs)
    outputs = {}
    for k, n in enumerate(num_classes.values()):
        x = keras.layers.Dropout(cfg.dropout, seed=seed + k, name=f"{keys[k]}-dropout")(features)
        outputs[keys[k]] = keras.layers.Dense(
            n, activation="softmax", dtype="float32", name=keys[k],
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 100 + k))(x)
    return keras.Model(inputs, outputs, name=f"cropclf_{cfg.backbone}")


def check_backbone(cfg: ModelConfig, image_size) -> None:
    """Raises `ConfigError` now, before any data work, if `trunk` would refuse ``cfg`` or ``image_size``,
    or its weights cannot be had (ImageNet weights are fetched into Keras's cache here, once)."""
    if cfg.weights not in (None, "imagenet"):
        weights_source(cfg, cfg.weights)
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
    """The shared feature extractor ``pixels (0..255) -> features``, as one nested model.

    A keras.applications trunk is the application model (``include_top=False``, average pooling) behind
    its family's own ``preprocess_input``, as layers. ``cfg.weights == "imagenet"`` loads Keras's ImageNet
    weights (Keras downloads them into its cache on first use); other weights are loaded by `build_model`.
    """
    inputs = keras.Input((*image_size, 3), name="pixels")
    if cfg.backbone == "small":
        _check_small(image_size)
        if cfg.alpha != 1.0:
            raise ConfigError(f"`model.alpha` applies to MobileNet trunks; the small trunk's width is "
                              f"`model.width`. Received: alpha={cfg.alpha}")
        return keras.Model(inputs, _small_trunk(inputs, cfg.width, seed), name="trunk")
    factory = _factory(cfg.backbone)
    kwargs = {}
    if "alpha" in inspect.signature(factory).parameters:
        kwargs["alpha"] = cfg.alpha
    elif cfg.alpha != 1.0:
        raise ConfigError(f"`model.alpha` applies to MobileNet, MobileNetV2 and MobileNetV3 trunks, not "
                          f"{cfg.backbone}. Received: alpha={cfg.alpha}")
    imagenet = cfg.weights == "imagenet"
    cached = _cached_files() if imagenet else set()
    try:
        features = factory(include_top=False, weights="imagenet" if imagenet else None,
                           input_shape=(*image_size, 3), pooling="avg", **kwargs)
    except ValueError as e:  # keras.applications check the input size (and alpha) themselves: say it in our terms
        least = re.search(r"at least (\d+)x(\d+)", str(e))
        if least is not None:
            raise ConfigError(f"Backbone {cfg.backbone} needs input crops of at least {least[1]}x{least[2]} px; "
                              f"crop.image_size is {image_size[0]}x{image_size[1]}. Pass a larger --image-size "
                              f"or another --backbone. Received: {e}") from None
        if "URL fetch failure" in str(e) or "corrupted file" in str(e):
            raise _imagenet_unavailable(cfg, e, cached) from None
        raise ConfigError(f"Backbone {cfg.backbone}{' with ImageNet weights' if imagenet else ''} refuses "
                          f"{image_size[0]}x{image_size[1]} px crops or model.alpha={cfg.alpha}: {e} Pass another "
                          f"--image-size, model.alpha or --backbone. Received: {e}") from None
    except Exception as e:
        if "URL fetch failure" not in str(e):  # keras.utils.get_file raises a bare Exception when offline
            raise
        raise _imagenet_unavailable(cfg, e, cached) from None
    x = inputs
    for layer in _preprocessing_layers(cfg.backbone):
        x = layer(x)
    return keras.Model(inputs, features(x), name="trunk")


def _factory(backbone: str):
    factory = getattr(keras.applications, backbone, None)
    if factory is None or not callable(factory) or not backbone[:1].isupper():
        known = sorted(n for n in dir(keras.applications) if n[0].isupper())
        raise ConfigError(f"`model.backbone` must be 'small' or a keras.applications model such as "
                          f"{known[:6]}... Received: {backbone!r}")
    return factory


def family(backbone: str) -> str:
    """The keras.applications module a trunk comes from (``resnet`` for ResNet50), which fixes its preprocessing."""
    return _factory(backbone).__module__.rsplit(".", 1)[-1]


def _preprocessing_layers(backbone: str) -> list:
    """``keras.applications.<family>.preprocess_input`` for 0..255 RGB pixels, as float32 Keras layers."""
    mode = _PREPROCESSING.get(family(backbone))
    if mode is None:
        raise ConfigError(f"cropclf does not know how keras.applications.{family(backbone)} preprocesses its "
                          f"input, so it cannot build {backbone} faithfully. Received: {backbone!r}")
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1, dtype="float32", name="scale_pixels")]
    if mode == "torch":
        scale = [1 / (255 * s) for s in _TORCH_STD]
        offset = [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)]
        return [keras.layers.Rescaling(scale, offset=offset, dtype="float32", name="scale_pixels")]
    if mode == "caffe":
        # RGB -> BGR and the mean, exactly: a fixed matrix of ones and zeros (no Keras layer swaps channels)
        swap = np.eye(3, dtype=np.float32)[::-1]
        bias = -np.asarray(_CAFFE_MEAN_BGR, np.float32)
        return [keras.layers.Dense(3, trainable=False, dtype="float32", name="rgb_to_bgr_minus_mean",
                                   kernel_initializer=keras.initializers.Constant(swap),
                                   bias_initializer=keras.initializers.Constant(bias))]
    return []


def _cached_files() -> set:
    folder = Path(keras_cache_dir()) / "models"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _imagenet_unavailable(cfg: ModelConfig, error: Exception, cached: set) -> ConfigError:
    """The one-line error for ImageNet weights Keras could not download: which file, from where, to where.

    ``cached``: the cache's file names before Keras looked. A file of the right name that was there failed
    Keras's hash check: Keras then tried to download it again and, failing, deleted it.
    """
    url = re.search(r"(https?://\S+?\.h5)", str(error))
    url = url[1] if url else "(see Keras's message)"
    name = _KERAS_FILE_NAMES.get(url.rsplit("/", 1)[-1], url.rsplit("/", 1)[-1])
    place = Path(keras_cache_dir()) / "models" / name
    found = (" The file that was there did not match Keras's hash for it (a partial or other file), and Keras "
             "removed it." if name in cached else "")
    return ConfigError(f"Backbone {cfg.backbone}: Keras cannot download its ImageNet weights (offline?) and does "
                       f"not find them in its cache.{found} Download {url} where you can and place it at {place} "
                       f"(the Keras cache: $KERAS_HOME, else ~/.keras); or pass --weights <that file>. "
                       f"Received: {error}")


# keras.applications files whose cache name is not their URL's last part
_KERAS_FILE_NAMES = {"NASNet-mobile-no-top.h5": "nasnet_mobile_no_top.h5",
                     "NASNet-large-no-top.h5": "nasnet_large_no_top.h5"}


def keras_cache_dir() -> str:
    """The folder keras.utils.get_file caches into: ``$KERAS_HOME`` (read when Keras was imported), else
    ``~/.keras``; ``/tmp/.keras`` when that is not writable."""
    try:
        from keras.src.backend.config import keras_home  # the same value get_file uses

        home = keras_home()
    except ImportError:  # a Keras that moved it: its documented rule
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    home = os.path.expanduser(home)
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return home


def load_trunk_weights(shared: keras.Model, cfg: ModelConfig, weights: str) -> None:
    """Sets the trunk ``shared`` to the weights in ``weights``: a run directory's or a ``.keras`` model's
    trunk, or a weights file saved from the same trunk (or from its keras.applications model alone,
    such as Keras's own ImageNet files).

    Raises:
        ConfigError: the source does not exist or does not fit this trunk (naming both architectures).
    """
    source = weights_source(cfg, weights)
    if source.model_file is not None:
        try:
            their = keras.models.load_model(source.model_file, compile=False).get_layer("trunk")
        except ValueError as e:
            raise ConfigError(f"--weights {source.path}: {source.model_file} holds no cropclf trunk ({e}). "
                              f"Received: {source.model_file}") from None
        values = their.get_weights()
        shapes = [w.shape for w in values]
        if shapes != [tuple(w.shape) for w in shared.weights]:
            theirs = their.name if source.run is None else describe_trunk(source.run.model)
            raise ConfigError(f"--weights {source.path}: its trunk ({theirs}, {len(shapes)} weights) does not fit "
                              f"this run's {describe_trunk(cfg)} trunk ({len(shared.weights)} weights). Pass the "
                              f"backbone, width and alpha it was trained with. Received: {source.model_file}")
        shared.set_weights(values)
        return
    body = _body(shared)
    errors = []
    for target in ([body, shared] if body is not shared else [shared]):
        try:
            target.load_weights(str(source.path))
            return
        except (ValueError, KeyError, OSError) as e:  # Keras reports a mismatch as ValueError
            errors.append(str(e).replace("\n", " ")[:300])
    raise ConfigError(f"--weights {source.path}: this file does not fit a {describe_trunk(cfg)} trunk (was it saved "
                      f"from another backbone, width or alpha?). Received: {errors[-1]}")


def _body(shared: keras.Model) -> keras.Model:
    """The keras.applications model inside a trunk, or the (small) trunk itself."""
    nested = [layer for layer in shared.layers if isinstance(layer, keras.Model)]
    return nested[0] if nested else shared


def trunk_layers(model: keras.Model) -> list:
    """The trunk's layers that hold weights, bottom to top, preprocessing left out."""
    body = _body(model.get_layer("trunk"))
    return [layer for layer in body.layers if layer.weights and layer.name not in _PREPROCESSING_NAMES]


_PREPROCESSING_NAMES = ("scale_pixels", "rgb_to_bgr_minus_mean")


# --- fine-tuning stages ------------------------------------------------------------------------------


def stage(cfg: Config, epoch: int) -> str:
    """The training stage of 0-based ``epoch``: a pure function of the epoch, so a resumed run needs no more state.

    ``"scratch"``: no pretrained weights, everything learns. ``"frozen"``: the first ``train.freeze_epochs``
    of a pretrained trunk, heads only. ``"finetune"``: then the top ``train.unfreeze`` of the trunk too.
    """
    if cfg.model.weights is None:
        return "scratch"
    return "frozen" if epoch < cfg.train.freeze_epochs else "finetune"


def learning_rate_at(cfg: Config, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under ``train.schedule="cosine"``: the stage's rate (fine-tuning:
    times ``train.finetune_lr_factor``) on a half cosine from the stage's first epoch to ``train.epochs``, after
    ``train.warmup_epochs`` rising linearly to it. A pure function of the epoch, like `stage`: resumes need no state.
    """
    first = 0 if stage(cfg, epoch) != "finetune" else cfg.train.freeze_epochs
    rate = cfg.train.learning_rate * (cfg.train.finetune_lr_factor if stage(cfg, epoch) == "finetune" else 1)
    k, warm = epoch - first, cfg.train.warmup_epochs
    if k < warm:
        return rate * (k + 1) / (warm + 1)
    span = max(1, cfg.train.epochs - first - warm)
    return rate * 0.5 * (1 + math.cos(math.pi * min(k - warm, span) / span))


def stage_spans(cfg: Config, first: int, end: int) -> list[tuple[int, int]]:
    """Epochs ``[first, end)`` cut where the stage changes: one ``fit`` call each."""
    spans, start = [], first
    for epoch in range(first + 1, end):
        if stage(cfg, epoch) != stage(cfg, epoch - 1):
            spans.append((start, epoch))
            start = epoch
    return spans + [(start, end)] if end > start else spans


def apply_stage(model: keras.Model, cfg: Config, name: str) -> keras.Model:
    """Sets what learns in stage ``name`` and compiles ``model`` with that stage's learning rate.

    Compiling again gives a fresh optimizer, as Keras requires after ``trainable`` changes.
    """
    shared = model.get_layer("trunk")
    if name == "scratch":
        return compile_model(model, cfg.train.learning_rate, cfg.train.weight_decay, cfg.train.label_smoothing)
    shared.trainable = False  # every sublayer too
    if name == "frozen":
        return compile_model(model, cfg.train.learning_rate, cfg.train.weight_decay, cfg.train.label_smoothing)
    layers = trunk_layers(model)
    fraction = 1.0 if cfg.train.unfreeze == "all" else float(cfg.train.unfreeze)
    top = layers[len(layers) - math.ceil(fraction * len(layers)):] if fraction > 0 else []
    if top:
        shared.trainable = True  # a frozen parent hides its children's weights: open it, then close all but `top`
        for layer in shared.layers:
            layer.trainable = False
        body = _body(shared)
        if body is not shared:
            body.trainable = True
            for layer in body.layers:
                layer.trainable = False
        for layer in top:
            # BatchNorm keeps its ImageNet statistics and scale (it runs in inference mode anyway)
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return compile_model(model, cfg.train.learning_rate * cfg.train.finetune_lr_factor, cfg.train.weight_decay,
                         cfg.train.label_smoothing)


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


def compile_model(model: keras.Model, learning_rate: float, weight_decay: float = 0.0,
                  label_smoothing: float = 0.0) -> keras.Model:
    """Adam (AdamW, decoupled weight decay, when ``weight_decay`` > 0), categorical cross-entropy (targets
    smoothed by ``label_smoothing``) and accuracy, keyed by each head's output key."""
    names = list(model.output.keys()) if isinstance(model.output, dict) else model.output_names
    optimizer = (keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay) if weight_decay > 0
                 else keras.optimizers.Adam(learning_rate))
    model.compile(
        optimizer=optimizer,
        loss={n: keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing) for n in names},
        metrics={n: [keras.metrics.CategoricalAccuracy(name="accuracy")] for n in names},
    )
    return model
