import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest


pytestmark = pytest.mark.slow


def _fresh_python(code: str, tmp_path):
    """Runs code in a new interpreter that may import TensorFlow only."""
    path = tmp_path / "probe.py"
    path.write_text(textwrap.dedent(code) + textwrap.dedent("""
        import sys
        assert not any(m == "cropclf" or m.startswith("cropclf.") for m in sys.modules), "cropclf imported"
    """))
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_signature_matches_the_keras_model(trained_run, tmp_path):
    from cropclf.config import Config
    from cropclf.data.crops import canonical_crop
    from cropclf.data.images import load_image

    cfg = Config.from_file(trained_run / "config.json")
    split = pd.read_csv(trained_run / "split.csv")
    path = split.loc[split["split"] == "test", "path"].iloc[0]
    image = load_image(path)
    h, w = image.shape[:2]
    boxes = np.array([[10, 12, 40, 30], [w - 20, h - 25, 60, 50], [-10, -5, 30, 40], [w / 3, h / 4, 5.5, 80]],
                     np.float32)
    crops = np.stack([canonical_crop(image, b, cfg.crop.image_size, cfg.crop.margin) for b in boxes])
    model = keras.models.load_model(trained_run / "model.keras")
    expected = model.predict(crops.astype(np.float32), verbose=0)
    np.savez(tmp_path / "inputs.npz", image=image, boxes=boxes, crops=crops,
             name=expected["name"], type=expected["type"])
    cv2.imwrite(str(tmp_path / "image.jpg"), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = _fresh_python(f"""
        import json, numpy as np, tensorflow as tf
        d = np.load("inputs.npz")
        m = tf.saved_model.load({str(trained_run / "saved_model")!r})
        assert set(m.signatures) >= {{"serving_default", "classify_regions", "classify_jpeg", "metadata"}}
        meta = m.signatures["metadata"]()
        labels = json.loads(meta["labels_json"].numpy())
        res = {{}}
        res["default"] = m.signatures["serving_default"](images=tf.constant(d["crops"]))
        res["regions"] = m.signatures["classify_regions"](image=tf.constant(d["image"]), boxes=tf.constant(d["boxes"]))
        res["jpeg"] = m.signatures["classify_jpeg"](image_bytes=tf.constant(open("image.jpg", "rb").read()),
                                                    boxes=tf.constant(d["boxes"]))
        out = {{}}
        for sig, r in res.items():
            for head in ("name", "type"):
                p = r[head + "_probabilities"].numpy()
                out[sig + "_" + head] = float(np.abs(p - d[head]).max())
                names = [s.decode() for s in r[head + "_label"].numpy()]
                assert names == [labels[head]["classes"][i] for i in p.argmax(1)], (sig, head)
                assert np.allclose(r[head + "_score"].numpy(), p.max(1))
        print(json.dumps(out))
    """, tmp_path)
    diffs = json.loads(out.strip().splitlines()[-1])
    assert diffs["default_name"] < 1e-4 and diffs["default_type"] < 1e-4  # same pixels in, same numbers out
    assert diffs["regions_name"] < 0.05 and diffs["regions_type"] < 0.05  # in-graph crop: rounding at most
    assert diffs["jpeg_name"] < 0.2 and diffs["jpeg_type"] < 0.2  # JPEG re-encoding noise


def test_train_serve_agreement_on_test_split(trained_run):
    import tensorflow as tf

    from cropclf.config import Config
    from cropclf.data.loading import load_frame
    from cropclf.data.images import load_image
    from cropclf.data.labels import load_label_maps
    from cropclf.data.sequence import CropSequence

    cfg = Config.from_file(trained_run / "config.json")
    maps = load_label_maps(trained_run / "labels.json")
    split = dict(pd.read_csv(trained_run / "split.csv").values)
    frame = load_frame(cfg, log=lambda *a: None)
    frame = frame[frame["path"].map(split) == "test"]
    seq = CropSequence(frame, maps, 64, cfg.crop, progress=False)
    keras_probs = keras.models.load_model(trained_run / "model.keras").predict(seq, verbose=0)
    served = tf.saved_model.load(str(trained_run / "saved_model")).signatures["classify_regions"]
    agree, worst = {"name": [], "type": []}, 0.0
    for path, group in frame.loc[seq.index].groupby("path", sort=False):
        boxes = group[["x", "y", "width", "height"]].to_numpy(np.float32)
        r = served(image=tf.constant(load_image(path)), boxes=tf.constant(boxes))
        pos = [seq.index.get_loc(i) for i in group.index]
        for head in agree:
            p = r[head + "_probabilities"].numpy()
            agree[head].extend(p.argmax(1) == keras_probs[head][pos].argmax(1))
            worst = max(worst, float(np.abs(p - keras_probs[head][pos]).max()))
    for head, same in agree.items():
        assert np.mean(same) >= 0.99, (head, np.mean(same), worst)


def test_exif_rotated_jpeg_is_served_upright(trained_run, tmp_path):
    """classify_jpeg applies EXIF orientation as VIA (a browser) and OpenCV show the image."""
    import io

    import tensorflow as tf
    from PIL import Image

    from cropclf.data.images import load_image

    rng = np.random.default_rng(0)
    upright = cv2.GaussianBlur(rng.integers(0, 255, (120, 80, 3), dtype=np.uint8), (9, 9), 0)
    stored = np.rot90(upright, 1).copy()  # a camera stores it sideways with Orientation=6
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    pil.save(buf, "JPEG", exif=exif, quality=98)
    (tmp_path / "rotated.jpg").write_bytes(buf.getvalue())
    decoded = load_image(tmp_path / "rotated.jpg")
    assert decoded.shape == upright.shape
    boxes = tf.constant([[5, 10, 60, 90]], tf.float32)
    m = tf.saved_model.load(str(trained_run / "saved_model"))
    a = m.signatures["classify_jpeg"](image_bytes=tf.constant(buf.getvalue()), boxes=boxes)
    b = m.signatures["classify_regions"](image=tf.constant(decoded), boxes=boxes)
    np.testing.assert_allclose(a["type_probabilities"], b["type_probabilities"], atol=0.05)


def test_failed_export_leaves_previous_intact(trained_run, tmp_path, monkeypatch):
    from cropclf.serving.export import export_run

    out = tmp_path / "exported"
    export_run(trained_run, out, log=lambda *a: None)
    before = (out / "saved_model.pb").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import cropclf.serving.export

    monkeypatch.setattr(cropclf.serving.export.artifacts, "write_text", full_disk)  # midway through the export
    with pytest.raises(OSError, match="No space left"):
        export_run(trained_run, out, log=lambda *a: None)
    assert (out / "saved_model.pb").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]


def test_saved_model_cli_lists_signatures(trained_run):
    cli = Path(sys.executable).parent / "saved_model_cli"  # beside the interpreter running the tests
    exe = str(cli) if cli.exists() else "saved_model_cli"
    done = subprocess.run([exe, "show", "--dir", str(trained_run / "saved_model"), "--all"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("serving_default", "classify_regions", "classify_jpeg", "name_label", "type_probabilities",
                 "DT_UINT8", "DT_STRING"):
        assert name in done.stdout, name


# --- the export path holds a complete SavedModel at every instant (fault injection) -----------------

FAULT_HW = (10, 14)


def _fault_image():
    rng = np.random.default_rng(4)
    return (rng.integers(0, 2, (30, 40, 3)) * 255).astype(np.uint8)


def _served(path):
    """The crop the SavedModel at ``path`` cuts for a fixed box (the pixel model returns its input)."""
    import tensorflow as tf
    from test_export_parity import served_crops

    sig = tf.saved_model.load(str(path)).signatures["classify_regions"]
    return served_crops(sig, FAULT_HW, image=tf.constant(_fault_image()),
                        boxes=tf.constant([[5, 6, 20, 15]], tf.float32))[0]


def _tree(path) -> dict:
    """Every file under ``path`` (links followed) -> its bytes: equal trees are the same SavedModel."""
    path = Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """Two pixel-model SavedModels that crop differently (margins 0 and 0.5), exported once."""
    from cropclf.data.crops import canonical_crop
    from test_export_parity import export_pixel_model

    root = tmp_path_factory.mktemp("exports")
    old, new = export_pixel_model(root / "old", FAULT_HW, 0.0), export_pixel_model(root / "new", FAULT_HW, 0.5)
    crops = {k: canonical_crop(_fault_image(), [5, 6, 20, 15], FAULT_HW, m) for k, m in (("old", 0), ("new", 0.5))}
    assert np.abs(crops["old"].astype(int) - crops["new"]).max() > 100
    for key, path in (("old", old), ("new", new)):  # really exported, loadable, serving its own crop
        assert np.abs(_served(path).astype(int) - crops[key]).max() <= 1
    return {"old": old.resolve(), "new": new.resolve(), "crops": crops}


class _Snapshots:
    """Copies the export's parent folder before every file-system step of `publish_version`: each copy
    is what a ``kill -9`` at that step leaves behind (no cleanup runs)."""

    def __init__(self, monkeypatch, root, dest):
        import os
        import shutil

        import cropclf.serving.export

        self.root, self.dest, self.steps, self.busy = root, dest, [], False
        for module, name in [(os, "rename"), (os, "replace"), (os, "symlink"), (shutil, "rmtree"),
                             (cropclf.serving.export, "_exchange"), (cropclf.serving.export, "_fsync_tree")]:
            monkeypatch.setattr(module, name, self._wrap(name, getattr(module, name)))

    def _wrap(self, name, real):
        def step(*args, **kwargs):
            if not self.busy:
                self.take(name)
            return real(*args, **kwargs)
        return step

    def take(self, name):
        import shutil

        self.busy = True
        try:
            snap = self.dest / f"{len(self.steps):02d}-{name}"
            shutil.copytree(self.root, snap, symlinks=True)
            self.steps.append(snap)
        finally:
            self.busy = False


def _publish(out, source, snaps=None):
    """`publish_version` with the SavedModel writer replaced by a copy of an export made earlier."""
    import shutil

    from cropclf.serving.export import publish_version

    with publish_version(out) as tmp:
        if snaps:
            snaps.take("write")
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        if snaps:
            snaps.take("written")


@pytest.mark.parametrize("legacy", [False, True], ids=["versioned", "plain-folder-from-older-cropclf"])
def test_export_path_holds_a_complete_model_at_every_step(tmp_path, monkeypatch, two_exports, legacy):
    import shutil

    root = tmp_path / "run"
    out = root / "saved_model"
    if legacy:  # an export written by cropclf before versioned exports: a plain folder
        shutil.copytree(two_exports["old"], out)
    else:
        _publish(out, two_exports["old"])
        _publish(out, two_exports["old"])  # a third export must also drop the oldest version
    trees = {k: _tree(two_exports[k]) for k in ("old", "new")}
    snaps = _Snapshots(monkeypatch, root, tmp_path / "snaps")
    _publish(out, two_exports["new"], snaps)
    snaps.take("done")
    monkeypatch.undo()
    assert len(snaps.steps) >= 8, [s.name for s in snaps.steps]
    served = []
    for snap in snaps.steps:
        tree = _tree(snap / "saved_model")
        assert tree in (trees["old"], trees["new"]), snap.name  # whole, whichever step it was killed at
        served.append("new" if tree == trees["new"] else "old")
    assert served[0] == "old" and served[-1] == "new"
    assert served == sorted(served, key=["old", "new"].index), list(zip([s.name for s in snaps.steps], served))
    last_old = snaps.steps[served.index("new") - 1]
    for snap, key in ((last_old, "old"), (snaps.steps[-1], "new")):  # loads and serves through the link
        assert np.abs(_served(snap / "saved_model").astype(int) - two_exports["crops"][key]).max() <= 1
    assert out.is_symlink() and (out / "saved_model.pb").is_file()
    numbered = sorted(p.name for p in (root / "saved_model.versions").iterdir())
    assert numbered == (["2", "3"] if not legacy else ["1"]), numbered
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]


def test_export_recovers_from_a_kill_just_before_the_swap(tmp_path, monkeypatch, two_exports):
    """Killed with the new version and its link written but not swapped in: the next export works
    and removes what the killed one left."""
    import os
    import shutil

    root = tmp_path / "run"
    out = root / "saved_model"
    _publish(out, two_exports["old"])
    snaps = _Snapshots(monkeypatch, root, tmp_path / "snaps")
    _publish(out, two_exports["new"], snaps)
    monkeypatch.undo()
    before_swap = next(s for s in snaps.steps if s.name.endswith("-replace"))
    mid_write = next(s for s in snaps.steps if s.name.endswith("-written"))
    shutil.rmtree(root)
    shutil.copytree(before_swap, root, symlinks=True)
    shutil.copytree(next((mid_write / "saved_model.versions").glob(".tmp-*")),
                    root / "saved_model.versions" / ".tmp-1-x")  # and a half-written one
    assert _tree(out) == _tree(two_exports["old"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # leftovers name their process: now gone
    dead.wait()
    for p in [*root.iterdir(), *(root / "saved_model.versions").iterdir()]:
        if p.name.startswith((".saved_model.link-", ".tmp-")):
            p.rename(p.with_name(p.name.replace(f"-{os.getpid()}", f"-{dead.pid}").replace("-1-", f"-{dead.pid}-")))
    _publish(out, two_exports["new"])
    assert _tree(out) == _tree(two_exports["new"])
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in (root / "saved_model.versions").iterdir()) == ["2", "3"]
    assert os.readlink(out) == "saved_model.versions/3"


@pytest.mark.parametrize("step", ["rename", "symlink", "replace"])
def test_a_failed_step_leaves_the_previous_model_in_use(tmp_path, monkeypatch, two_exports, step):
    import os

    import cropclf.serving.export

    out = tmp_path / "saved_model"
    _publish(out, two_exports["old"])
    real = getattr(os, step)

    def failing(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cropclf.serving.export.os, step, failing)
    with pytest.raises(OSError, match="Input/output error"):
        _publish(out, two_exports["new"])
    monkeypatch.setattr(cropclf.serving.export.os, step, real)
    assert _tree(out) == _tree(two_exports["old"])
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in (tmp_path / "saved_model.versions").iterdir() if p.name.startswith(".")]
    _publish(out, two_exports["new"])  # and the next export goes through
    assert _tree(out) == _tree(two_exports["new"])


def test_predict_and_evaluate_read_the_linked_export(two_exports, tmp_path):
    """The documented path (a link) is what `--model runs/x/saved_model` and evaluation open."""
    from cropclf.serving.prediction import Classifier

    out = tmp_path / "saved_model"
    _publish(out, two_exports["new"])
    Classifier(out)  # checks for saved_model.pb, loads the signatures
