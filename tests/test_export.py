import errno
import json
import subprocess
import sys
import textwrap

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from conftest import REPO

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
    from cropclf.crops import canonical_crop
    from cropclf.images import load_image

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
    from cropclf.dataset import load_frame
    from cropclf.images import load_image
    from cropclf.labels import load_label_maps
    from cropclf.sequence import CropSequence

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

    from cropclf.images import load_image

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
    from cropclf.export import export_run

    out = tmp_path / "exported"
    export_run(trained_run, out, log=lambda *a: None)
    before = (out / "saved_model.pb").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import cropclf.export

    monkeypatch.setattr(cropclf.export.artifacts, "write_text", full_disk)  # midway through the export
    with pytest.raises(OSError, match="No space left"):
        export_run(trained_run, out, log=lambda *a: None)
    assert (out / "saved_model.pb").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]


def test_saved_model_cli_lists_signatures(trained_run):
    cli = REPO / ".venv" / "bin" / "saved_model_cli"
    exe = str(cli) if cli.exists() else "saved_model_cli"
    done = subprocess.run([exe, "show", "--dir", str(trained_run / "saved_model"), "--all"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("serving_default", "classify_regions", "classify_jpeg", "name_label", "type_probabilities",
                 "DT_UINT8", "DT_STRING"):
        assert name in done.stdout, name
