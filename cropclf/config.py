"""One configuration tree, defaults in code, saved beside every artefact.

Each default carries a one-line reason. `Config.from_dict` rejects unknown keys so that a typo in a
config file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from cropclf.errors import ConfigError

SEED_LIMIT = 2**32  # NumPy's and Keras' seeds are unsigned 32-bit integers


def _integers(section: str, obj, names) -> None:
    """Refuses a non-integer count (a float, a string or a bool from a config file or ``--set``)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{section}.{name}` must be an integer. Received: {value!r}")


@dataclass(frozen=True)
class DataConfig:
    annotations: str | None = None  # None: the built-in demo dataset, generated on first use
    images: str | None = None  # folder image filenames resolve against; None: the annotation's folder
    heads: tuple[str, ...] = ("name", "type")  # region (or file) attributes, one softmax head each
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train/val/test fractions of images
    skip_bad_images: bool = False  # missing/unreadable images are an error unless the user opts out
    allow_outside_root: bool = False  # filenames that climb out of the image folder are refused
    demo_dir: str = "data/demo"  # where the demo dataset is written
    demo_images: int = 240  # ~1,800 regions: enough for >0.95 on both heads, small enough for CPU
    cache_memory_mb: int = 2048  # decoded region patches beyond this go to a file in cache_dir
    cache_dir: str | None = None  # that file's folder; None: the system's temporary folder (often RAM-backed)

    def __post_init__(self):
        if self.cache_memory_mb < 0:
            raise ConfigError(f"`data.cache_memory_mb` must be >= 0. Received: {self.cache_memory_mb}")
        if len(self.heads) == 0 or len(set(self.heads)) != len(self.heads):
            raise ConfigError(f"`data.heads` must name one or more distinct attributes. Received: {self.heads}")
        if not all(isinstance(h, str) and h.strip() for h in self.heads):
            raise ConfigError(f"`data.heads` must be non-blank attribute names. Received: {list(self.heads)}")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError(f"`data.split` must be three fractions >= 0 summing to 1. Received: {self.split}")
        if self.split[0] <= 0:
            raise ConfigError(f"`data.split` needs a training fraction > 0. Received: {self.split}")


@dataclass(frozen=True)
class CropConfig:
    image_size: tuple[int, int] = (64, 64)  # (height, width) fed to the model; 64 trains fast on CPU
    margin: float = 0.15  # context added on each side, as a fraction of the box's width/height
    resize: str = "stretch"  # "stretch" fills the output; "letterbox" keeps the aspect ratio
    pad_value: int = 0  # fill for whatever falls outside the image
    min_size: float = 2.0  # boxes narrower or lower than this many pixels cannot be cropped

    def __post_init__(self):
        if len(self.image_size) != 2:
            raise ConfigError(f"`crop.image_size` must be (height, width). Received: {self.image_size}")
        h, w = self.image_size
        if any(isinstance(v, bool) or not isinstance(v, int) for v in self.image_size):
            raise ConfigError(f"`crop.image_size` must be two integers. Received: {self.image_size}")
        if not (8 <= h <= 1024 and 8 <= w <= 1024):
            raise ConfigError(f"`crop.image_size` must be (height, width) in [8, 1024]. Received: {self.image_size}")
        if not 0 <= self.margin <= 2:
            raise ConfigError(f"`crop.margin` must be in [0, 2]. Received: {self.margin}")
        if self.resize not in ("stretch", "letterbox"):
            raise ConfigError(f"`crop.resize` must be 'stretch' or 'letterbox'. Received: {self.resize!r}")
        if not 0 <= self.pad_value <= 255:
            raise ConfigError(f"`crop.pad_value` must be in [0, 255]. Received: {self.pad_value}")


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True  # training only; validation and evaluation never augment
    shift: float = 0.08  # box jitter: centre moves up to this fraction of the box size
    scale: float = 0.15  # box jitter: size changes by up to this fraction (log-uniform)
    hflip: float = 0.5  # probability; set 0 when left/right matters to your labels
    rotate: float = 10.0  # degrees, both ways
    color: float = 0.2  # brightness/contrast/saturation jitter; hue moves 1/10 of it
    blur: float = 0.1  # probability of a light blur or noise, as cameras give
    # box jitter keeps the image border where the served crop shows it (crops.keep_border); on by default since
    # bccd's `truncated` went from 0.911 to 0.977 macro-F1 with it (README, quality table), the demo unchanged
    keep_border: bool = True

    def __post_init__(self):
        for name in ("shift", "scale", "hflip", "color", "blur"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"`augment.{name}` must be in [0, 1]. Received: {getattr(self, name)}")
        if not 0 <= self.rotate <= 90:
            raise ConfigError(f"`augment.rotate` must be in [0, 90] degrees. Received: {self.rotate}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "small"  # "small" (our CPU-friendly CNN) or a keras.applications name
    width: int = 32  # filters in the first block of "small"; doubles per block
    dropout: float = 0.2  # before each head
    # None: random initial weights; "imagenet": Keras's own (downloaded once into its cache); a path: a trunk
    # weights file (.weights.h5 / .h5) or a previous run directory (its trunk; new heads): fine-tuned in stages
    weights: str | None = None
    alpha: float = 1.0  # width multiplier of MobileNet, MobileNetV2 and MobileNetV3 (ImageNet: 0.35-1.4 by family)

    def __post_init__(self):
        _integers("model", self, ("width",))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(f"`model.backbone` must be 'small' or a keras.applications name. "
                              f"Received: {self.backbone!r}")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights.strip()):
            raise ConfigError(f"`model.weights` must be null, 'imagenet' or a path. Received: {self.weights!r}")
        if self.weights == "imagenet" and self.backbone == "small":
            raise ConfigError("`model.weights` 'imagenet' needs a keras.applications backbone (e.g. --backbone "
                              "MobileNetV3Small); the small trunk has no ImageNet weights. Received: backbone 'small'")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 4:
            raise ConfigError(f"`model.alpha` must be a number in (0, 4]. Received: {self.alpha!r}")
        if self.width < 4:
            raise ConfigError(f"`model.width` must be >= 4. Received: {self.width}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"`model.dropout` must be in [0, 1). Received: {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # the demo reaches >0.99 on both heads in ~30 short epochs; the cosine schedule spans them
    batch_size: int = 64
    learning_rate: float = 3e-3  # Adam; the peak of the cosine schedule
    seed: int = 0  # splits, shuffling, augmentation and weights all derive from it
    workers: int = 2  # PyDataset workers (threads): this is a 2-core machine
    use_multiprocessing: bool = False  # threads are faster here: cv2 releases the GIL
    # epochs without val improvement before stopping; 0: never stop early. Off by default: on small real sets
    # the validation loss swings for the first epochs, and stopping on it ended runs at an early lucky epoch
    # (README, "The default recipe"); the cosine schedule runs its budget and the best epoch by val loss is kept
    early_stopping: int = 0
    # "cosine" (default): a half cosine over the epoch budget after `warmup_epochs` of linear warm-up
    # (model.learning_rate_at); "plateau": halve the learning rate after `reduce_lr` epochs without val improvement
    schedule: str = "cosine"
    reduce_lr: int = 2  # epochs without val improvement before halving the learning rate
    warmup_epochs: int = 1  # "cosine" only
    # Adam's decoupled weight decay (AdamW) when > 0, per step, times the learning rate as Keras applies it
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # each head's one-hot target moves this far towards uniform
    class_weight: str = "balanced"  # "balanced" weighs each head's classes by inverse frequency; "none"
    distribute: str = "none"  # "none", "mirrored" (local devices) or "multiworker" (TF_CONFIG)
    # multiworker: seconds a worker waits for every task of TF_CONFIG's cluster before it gives up (hosts a
    # scheduler starts minutes apart still meet; a mistyped address fails instead of hanging)
    peer_timeout: float = 300.0
    mixed_precision: str = "auto"  # "auto": float16 compute on a GPU, float32 on CPU; "on"; "off"
    # Fine-tuning a pretrained trunk (model.weights set), as Keras's transfer-learning guide does it: for the
    # first freeze_epochs only the heads learn (trunk frozen, BatchNorm in inference mode throughout); then the
    # top `unfreeze` fraction of the trunk's layers (or "all") learns too, at learning_rate * finetune_lr_factor.
    freeze_epochs: int = 5  # the new heads settle first, so their random gradients do not wreck the trunk
    unfreeze: float | str = 0.3  # fraction of the trunk's weighted layers, counted from the top; BatchNorm stays frozen
    finetune_lr_factor: float = 0.1  # pretrained features need small steps

    def __post_init__(self):
        _integers("train", self, ("epochs", "batch_size", "seed", "workers", "early_stopping", "reduce_lr",
                                  "freeze_epochs", "warmup_epochs"))
        if self.freeze_epochs < 0:
            raise ConfigError(f"`train.freeze_epochs` must be >= 0. Received: {self.freeze_epochs}")
        if not (self.unfreeze == "all" or (not isinstance(self.unfreeze, (bool, str))
                                           and isinstance(self.unfreeze, (int, float)) and 0 <= self.unfreeze <= 1)):
            raise ConfigError(f"`train.unfreeze` must be a fraction in [0, 1] of the trunk's layers, or 'all'. "
                              f"Received: {self.unfreeze!r}")
        if isinstance(self.finetune_lr_factor, bool) or not isinstance(self.finetune_lr_factor, (int, float)) \
                or not 0 < self.finetune_lr_factor <= 1:
            raise ConfigError(f"`train.finetune_lr_factor` must be in (0, 1]. Received: {self.finetune_lr_factor!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("`train.epochs` and `train.batch_size` must be >= 1. "
                              f"Received: {self.epochs}, {self.batch_size}")
        if self.workers < 1:
            raise ConfigError(f"`train.workers` must be >= 1. Received: {self.workers}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"`train.seed` must be in [0, 2**32 - 1] (NumPy and Keras take unsigned 32-bit "
                              f"seeds). Received: {self.seed}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"`train.warmup_epochs` must be >= 0. Received: {self.warmup_epochs}")
        if self.early_stopping < 0 or self.reduce_lr < 0:
            raise ConfigError("`train.early_stopping` and `train.reduce_lr` must be >= 0 epochs. "
                              f"Received: {self.early_stopping}, {self.reduce_lr}")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) \
                or not 0 < self.learning_rate < float("inf"):
            raise ConfigError(f"`train.learning_rate` must be a number > 0. Received: {self.learning_rate!r}")
        for name, high in (("weight_decay", 1.0), ("label_smoothing", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < high:
                raise ConfigError(f"`train.{name}` must be a number in [0, {high:g}). Received: {value!r}")
        if isinstance(self.peer_timeout, bool) or not isinstance(self.peer_timeout, (int, float)) \
                or not 0 < self.peer_timeout < float("inf"):
            raise ConfigError(f"`train.peer_timeout` must be a number of seconds > 0. Received: {self.peer_timeout!r}")
        choices = {"class_weight": ("balanced", "none"), "distribute": ("none", "mirrored", "multiworker"),
                   "mixed_precision": ("auto", "on", "off"), "schedule": ("plateau", "cosine")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"`train.{name}` must be one of {allowed}. Received: {getattr(self, name)!r}")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        """Builds a config from nested dicts; unknown sections or keys are an error."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: a config must be a JSON object. Received: {type(d).__name__}")
        d = _moved_keys(d, source)
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown config section(s) {sorted(unknown)}; "
                              f"known: {sorted(sections)}. Received: {sorted(d)}")
        parts = {}
        for f in fields(cls):
            sub_cls = f.default_factory().__class__
            given = d.get(f.name, {})
            known = {sf.name for sf in fields(sub_cls)}
            bad = set(given) - known
            if bad:
                raise ConfigError(f"{source}: unknown key(s) {sorted(bad)} in section '{f.name}'; "
                                  f"known: {sorted(known)}. Received: {sorted(given)}")
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
            try:
                parts[f.name] = sub_cls(**kwargs)
            except TypeError as e:
                raise ConfigError(f"{source}: bad value in section '{f.name}': {e}. Received: {given}") from None
        return cls(**parts)

    @classmethod
    def from_file(cls, path) -> "Config":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"Config file {path} does not exist.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"Config file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d, source=str(path))

    def replace(self, **overrides) -> "Config":
        """Returns a copy with dotted overrides applied, e.g. ``replace(**{"train.epochs": 3})``."""
        d = self.to_dict()
        for key, value in overrides.items():
            key = MOVED_KEYS.get(key, key)
            section, _, name = key.partition(".")
            if section not in d or name not in d[section]:
                raise ConfigError(f"Unknown config key '{key}'. Received: {key}={value!r}")
            d[section][name] = value
        return Config.from_dict(d)


# keys that moved section: old config files (and --set) keep working
MOVED_KEYS = {"augment.cache_memory_mb": "data.cache_memory_mb"}


def _moved_keys(d: dict, source: str) -> dict:
    """Returns ``d`` with keys of `MOVED_KEYS` moved to their new section."""
    if not isinstance(d, dict):
        return d
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for old, new in MOVED_KEYS.items():
        (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
        if isinstance(d.get(old_section), dict) and old_name in d[old_section]:
            value = d[old_section].pop(old_name)
            target = d.setdefault(new_section, {})
            if not isinstance(target, dict):
                continue  # reported as a bad section below
            if new_name in target and target[new_name] != value:
                raise ConfigError(f"{source}: `{old}` (its old place) and `{new}` disagree; keep only `{new}`. "
                                  f"Received: {value!r} and {target[new_name]!r}")
            target[new_name] = value
    return d


# --- trunk weights and input size: read here, without TensorFlow, so scripts check them in a second ---

# Input size when the user gives none: 64 for the small trunk (fast on CPU); 96 for keras.applications
# trunks: at least every trunk's minimum (75 for the Inceptions, 71 for Xception, 32 for the rest), the
# smallest size Keras ships MobileNet/MobileNetV2 weights for, and affordable on CPU. NASNet's ImageNet
# weights accept only their own size.
DEFAULT_SIZE, DEFAULT_APPLICATION_SIZE = 64, 96
_FIXED_IMAGENET_SIZE = {"NASNetMobile": 224, "NASNetLarge": 331}


def default_image_size(cfg: ModelConfig) -> tuple[int, int]:
    """The input size to use when the user gives none: the source run's for a run to start from, else
    `DEFAULT_SIZE` for the small trunk and `DEFAULT_APPLICATION_SIZE` (or the fixed size NASNet's
    ImageNet weights need) for keras.applications trunks."""
    if cfg.weights not in (None, "imagenet"):
        source = weights_source(cfg, cfg.weights)
        if source.run is not None:
            return tuple(source.run.crop.image_size)
    if cfg.backbone == "small":
        return DEFAULT_SIZE, DEFAULT_SIZE
    side = _FIXED_IMAGENET_SIZE.get(cfg.backbone, DEFAULT_APPLICATION_SIZE) if cfg.weights == "imagenet" \
        else DEFAULT_APPLICATION_SIZE
    return side, side


class WeightsSource:
    """Where a trunk's initial weights come from: a weights file, or a run (its config and model file)."""

    def __init__(self, path: Path, run: Config | None = None, model_file: Path | None = None):
        self.path, self.run, self.model_file = path, run, model_file


def weights_source(cfg: ModelConfig, weights: str) -> WeightsSource:
    """Checks ``weights`` (a file, a run directory or a ``.keras`` model) against ``cfg``, without TensorFlow."""
    path = Path(weights).expanduser()
    if path.is_dir():
        config_file, model_file = path / "config.json", path / "model.keras"
        if not config_file.is_file() or not model_file.is_file():
            raise ConfigError(f"--weights {path}: a folder must be a cropclf run directory holding config.json and "
                              f"model.keras (train it first, or pass a weights file). Received: "
                              f"{sorted(p.name for p in path.iterdir())[:10]}")
        try:
            run = Config.from_dict(json.loads(config_file.read_text(encoding="utf-8")), source=str(config_file))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{config_file}: the run's config is damaged ({e}); pass another run. "
                              f"Received: {config_file}") from None
        ours = describe_trunk(cfg)
        theirs = describe_trunk(run.model)
        if ours != theirs:
            raise ConfigError(f"--weights {path}: that run's trunk is {theirs}, this run's is {ours}; a trunk's "
                              f"weights fit only the same architecture. Pass --backbone "
                              f"{run.model.backbone} (and the same width/alpha), or another run. "
                              f"Received: {theirs} vs {ours}")
        return WeightsSource(path, run, model_file)
    if not path.is_file():
        raise ConfigError(f"--weights: {path} is neither a weights file nor a run directory; pass 'imagenet', a "
                          f".weights.h5/.h5 file saved from a {cfg.backbone} trunk, or a run directory. "
                          f"Received: {weights!r}")
    if path.suffix == ".keras":
        return WeightsSource(path, None, path)
    if not path.name.endswith((".h5", ".hdf5")):
        raise ConfigError(f"--weights {path}: expected a .weights.h5 or .h5 weights file, a .keras model or a run "
                          f"directory. Received: {path.name!r}")
    return WeightsSource(path)


def describe_trunk(cfg: ModelConfig) -> str:
    if cfg.backbone == "small":
        return f"small (width {cfg.width})"
    return cfg.backbone + (f" (alpha {cfg.alpha})" if cfg.alpha != 1.0 else "")
