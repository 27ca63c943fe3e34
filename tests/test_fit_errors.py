"""Errors while `fit` builds a batch: bad data is one `error:` line (exit 2), a bug keeps its traceback (exit 1).

`fit` reads batches through `tf.data`, which wraps whatever a batch raises in a TensorFlow error. Each
case runs `scripts/train.py` through this file as a script that first replaces `CropSequence.crops`
with one that raises from a given training batch on (from the third: Keras reads the first two
directly, to learn the batch structure, and the rest through `tf.data`). It raises an `ImageError`
(a data problem; no real bad input can fail there, as the patch store checks and decodes every image
before training, so the fault is injected) or a `ZeroDivisionError` (a bug). The patch is made before
the workers exist, so forked worker processes inherit it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
pytestmark = pytest.mark.slow


def train(demo, out, kind, workers, mp):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CROPCLF_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["--annotations", demo, "--out", out, "--epochs", 1, "--image-size", 32, "--batch-size", 8,
            "--set", "model.width=4", "--workers", workers, "--set", f"train.use_multiprocessing={str(mp).lower()}",
            "--no-evaluate"]
    return subprocess.run([sys.executable, str(HERE), kind, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("workers, mp", [(1, False), (2, False), (2, True)])
def test_bad_data_in_a_batch_is_one_error_line(demo_small, tmp_path, workers, mp):
    done = train(demo_small, tmp_path / "run", "data:2", workers, mp)
    assert done.returncode == 2, done.stderr[-5000:]
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors == done.stderr.strip().splitlines()[-1:]
    # names the images and rows of the batch, which batch, and the problem itself
    assert re.match(r"error: \S+\.\w+ \(row \d+\)(; \S+\.\w+ \(row \d+\))*: building batch 2 of epoch \d+: "
                    r"pixels of \S+\.\w+ \(row \d+\) cannot be used\. Received: ", errors[0]), errors[0]
    assert not (tmp_path / "run" / "error.txt").exists()


@pytest.mark.parametrize("workers, mp, first", [(2, False, 0), (2, False, 2), (2, True, 2)])
def test_a_bug_in_a_batch_is_an_internal_error_with_its_traceback(demo_small, tmp_path, workers, mp, first):
    # first=0: in a batch Keras peeks at (read directly); 2: in one read through tf.data
    done = train(demo_small, tmp_path / "run", f"bug:{first}", workers, mp)
    assert done.returncode == 1, done.stderr[-5000:]
    saved = tmp_path / "run" / "error.txt"
    assert "Traceback" in done.stderr and "ZeroDivisionError: injected bug" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: internal error (traceback above; traceback saved to "
                                                    f"{saved}); please report it")
    assert not re.search(r"^\S*(CropclfError|ImageError): ", done.stderr, re.M)  # not turned into bad input
    assert "building batch" not in done.stderr
    text = saved.read_text()
    assert "ZeroDivisionError: injected bug" in text
    assert "in injected_crops" in text  # the worker's own frames, not only TensorFlow's wrapper


if __name__ == "__main__":
    import runpy

    from cropclf.errors import ImageError
    from cropclf.data.sequence import CropSequence

    kind, first = sys.argv[1].split(":")
    sys.argv = [str(REPO / "scripts" / "train.py"), *sys.argv[2:]]
    real_crops = CropSequence.crops

    def injected_crops(self, positions, epoch=0, batch=0, part=None):
        if self.jitter is not None and batch >= int(first):  # training batches only
            if kind == "bug":
                raise ZeroDivisionError("injected bug")
            p = positions[0]
            raise ImageError(f"pixels of {self.paths[p]} ({self.rows[p]}) cannot be used. Received: a test fault")
        return real_crops(self, positions, epoch, batch, part)

    CropSequence.crops = injected_crops
    runpy.run_path(sys.argv[0], run_name="__main__")
