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
    cache_memory_mb: int = 2048  # decoded region patches beyond this go to a memory-mapped file on disk
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

    def __post_init__(self):
        _integers("model", self, ("width",))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(f"`model.backbone` must be 'small' or a keras.applications name. "
                              f"Received: {self.backbone!r}")
        if self.width < 4:
            raise ConfigError(f"`model.width` must be >= 4. Received: {self.width}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"`model.dropout` must be in [0, 1). Received: {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # the demo reaches >0.99 on both heads in ~30 short epochs; early stopping may end sooner
    batch_size: int = 64
    learning_rate: float = 3e-3  # Adam; reduced on plateau
    seed: int = 0  # splits, shuffling, augmentation and weights all derive from it
    workers: int = 2  # PyDataset workers (threads): this is a 2-core machine
    use_multiprocessing: bool = False  # threads are faster here: cv2 releases the GIL
    early_stopping: int = 5  # epochs without val improvement before stopping
    reduce_lr: int = 2  # epochs without val improvement before halving the learning rate
    class_weight: str = "balanced"  # "balanced" weighs each head's classes by inverse frequency; "none"
    distribute: str = "none"  # "none", "mirrored" (local devices) or "multiworker" (TF_CONFIG)
    mixed_precision: str = "auto"  # "auto": float16 compute on a GPU, float32 on CPU; "on"; "off"

    def __post_init__(self):
        _integers("train", self, ("epochs", "batch_size", "seed", "workers", "early_stopping", "reduce_lr"))
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("`train.epochs` and `train.batch_size` must be >= 1. "
                              f"Received: {self.epochs}, {self.batch_size}")
        if self.workers < 1:
            raise ConfigError(f"`train.workers` must be >= 1. Received: {self.workers}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"`train.seed` must be in [0, 2**32 - 1] (NumPy and Keras take unsigned 32-bit "
                              f"seeds). Received: {self.seed}")
        if self.early_stopping < 0 or self.reduce_lr < 0:
            raise ConfigError("`train.early_stopping` and `train.reduce_lr` must be >= 0 epochs. "
                              f"Received: {self.early_stopping}, {self.reduce_lr}")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) \
                or not 0 < self.learning_rate < float("inf"):
            raise ConfigError(f"`train.learning_rate` must be a number > 0. Received: {self.learning_rate!r}")
        choices = {"class_weight": ("balanced", "none"), "distribute": ("none", "mirrored", "multiworker"),
                   "mixed_precision": ("auto", "on", "off")}
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
