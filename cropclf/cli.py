"""What the scripts share: config from file then flags, and errors as one line with no traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cropclf.config import Config, default_image_size
from cropclf.errors import ConfigError, CropclfError


def run(main) -> None:
    """Runs ``main()``; bad input becomes ``error: ...`` on stderr and exit status 2."""
    try:
        code = main()
    except CropclfError as e:
        for line in str(e).split(" | "):  # one line per problem, even when the text held newlines
            print("error: " + line.replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk, for one
        print(f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)  # a normal exit can abort while TensorFlow's threads are torn down
    except Exception as e:  # a bug, not bad input: keep the traceback for the report, and do not hang
        import traceback

        traceback.print_exc()
        saved = [n for n in getattr(e, "__notes__", []) if n.startswith("(traceback saved to")]
        print(f"error: internal error (traceback above{'; ' + saved[0][1:-1] if saved else ''}); please report it",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)  # TensorFlow and data-loader threads can keep a normal exit waiting forever
    sys.exit(code or 0)


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--annotations", help="VIA CSV/JSON export or project file, or a flat CSV (default: demo data)")
    g.add_argument("--images", help="folder image filenames resolve against (default: the annotation's folder)")
    g.add_argument("--allow-outside-root", action="store_true", default=None,
                   help="accept filenames that climb out of the image folder (../, absolute paths)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON config file; flags given here override it")
    add_data_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--heads", help="comma-separated attributes to predict (default: name,type); any VIA "
                                   "attribute name, e.g. \"name,Colour Group\"")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--image-size", help="crop size fed to the model: N or HxW (default 64)")
    g.add_argument("--seed", type=int, help="0 .. 2**32-1 (default 0)")
    g.add_argument("--backbone", help="'small' or a keras.applications name, e.g. MobileNetV3Small, ResNet50")
    g.add_argument("--weights", help="the trunk's initial weights: 'imagenet' (Keras's own; downloaded once into "
                                     "~/.keras/models), a .weights.h5/.h5 file saved from the same trunk, or a "
                                     "previous run directory (its trunk, new heads). Fine-tuned in two stages "
                                     "(train.freeze_epochs, train.unfreeze, train.finetune_lr_factor)")
    g.add_argument("--workers", type=int, help="data-loading threads")
    g.add_argument("--distribute", choices=("none", "mirrored", "multiworker"))
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="leave out (and list) regions of missing or unreadable images instead of stopping")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config value, e.g. --set crop.margin=0.2 (JSON values)")


def config_from_args(args) -> Config:
    """Defaults in code, then ``--config FILE``, then flags."""
    cfg = Config.from_file(args.config) if getattr(args, "config", None) else Config()
    o = {}
    if args.annotations:
        o["data.annotations"] = os.path.abspath(args.annotations)
    if args.images:
        o["data.images"] = os.path.abspath(args.images)
    if args.allow_outside_root:
        o["data.allow_outside_root"] = True
    if getattr(args, "skip_bad_images", None):
        o["data.skip_bad_images"] = True
    if getattr(args, "heads", None):
        o["data.heads"] = [h.strip() for h in args.heads.split(",") if h.strip()]
    for flag, key in (("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("seed", "train.seed"),
                      ("workers", "train.workers"), ("distribute", "train.distribute"), ("backbone", "model.backbone")):
        if getattr(args, flag, None) is not None:
            o[key] = getattr(args, flag)
    if getattr(args, "weights", None):
        o["model.weights"] = args.weights if args.weights == "imagenet" else os.path.abspath(args.weights)
    if getattr(args, "image_size", None):
        o["crop.image_size"] = _size(args.image_size)
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes SECTION.KEY=VALUE. Received: {item!r}")
        try:
            o[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            o[key.strip()] = value
    cfg = cfg.replace(**o) if o else cfg
    if not _size_given(args, o) and tuple(cfg.crop.image_size) != default_image_size(cfg.model):
        # the user gave no size: the trunk's own default (the source run's, 96 for keras.applications)
        cfg = cfg.replace(**{"crop.image_size": list(default_image_size(cfg.model))})
    return cfg


def _size_given(args, overrides: dict) -> bool:
    """Whether the user chose the input size: a flag, ``--set crop.image_size=...`` or the config file."""
    if "crop.image_size" in overrides:
        return True
    if getattr(args, "config", None):
        given = json.loads(Path(args.config).read_text(encoding="utf-8"))  # read fine by Config.from_file already
        return isinstance(given.get("crop"), dict) and "image_size" in given["crop"]
    return False


def _size(text: str):
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise ConfigError(f"--image-size takes N or HxW, e.g. 64 or 48x96. Received: {text!r}") from None
    if len(parts) not in (1, 2):
        raise ConfigError(f"--image-size takes N or HxW, e.g. 64 or 48x96. Received: {text!r}")
    return [parts[0], parts[-1]]
