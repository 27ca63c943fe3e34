"""The pixel limit: CROPCLF_MAX_PIXELS refuses big images, and raising it really lets them decode.

OpenCV has its own limit (OPENCV_IO_MAX_IMAGE_PIXELS, default 2^30 pixels) that it reads once, when
cv2 is imported. These tests scale the situation down so that it costs nothing: OpenCV's limit is
set to 1,000 pixels in a fresh interpreter, standing in for its 2^30 default, and the image is 15,000.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO, write_image


def _run(code: str, env: dict, tmp_path) -> dict:
    """Runs ``code`` in a fresh interpreter (OpenCV reads its limit once per process) and returns its JSON."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("CROPCLF_MAX_PIXELS", "OPENCV_IO_MAX_IMAGE_PIXELS")}
    full_env.update(env, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=full_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LOAD = """
    import json, os
    from cropclf.errors import ImageError
    from cropclf.data.images import load_image
    try:
        shape, error = list(load_image("big.png").shape), None
    except ImageError as e:
        shape, error = None, str(e)
    print(json.dumps({"shape": shape, "error": error, "opencv": os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS")}))
"""


@pytest.fixture
def big_png(tmp_path):
    rng = np.random.default_rng(0)
    return write_image(tmp_path / "big.png", (rng.integers(0, 2, (100, 150, 3)) * 255).astype(np.uint8))


def test_raising_the_limit_above_opencvs_lets_the_image_decode(big_png, tmp_path):
    """CROPCLF_MAX_PIXELS above OpenCV's own limit: the image decodes (before the fix OpenCV refused it)."""
    out = _run(LOAD, {"OPENCV_IO_MAX_IMAGE_PIXELS": "1000", "CROPCLF_MAX_PIXELS": "20000"}, tmp_path)
    assert out["error"] is None, out
    assert out["shape"] == [100, 150, 3]
    assert int(out["opencv"]) >= 20000


def test_the_limit_still_refuses_a_bigger_image(big_png, tmp_path):
    out = _run(LOAD, {"OPENCV_IO_MAX_IMAGE_PIXELS": "1000", "CROPCLF_MAX_PIXELS": "14999"}, tmp_path)
    assert out["shape"] is None
    assert "150x100 pixels, over the limit of 14,999; raise CROPCLF_MAX_PIXELS" in out["error"]


def test_opencvs_limit_is_raised_before_cv2_is_imported(big_png, tmp_path):
    """Importing any cropclf module first sets OpenCV's limit; cv2 itself then decodes the image."""
    out = _run("""
        import json, os
        import cropclf.data.crops  # imports cv2: the limit must already be in the environment
        import cv2, numpy as np
        image = cv2.imdecode(np.fromfile("big.png", np.uint8), cv2.IMREAD_COLOR_RGB)
        print(json.dumps({"shape": list(image.shape), "opencv": os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]}))
    """, {"OPENCV_IO_MAX_IMAGE_PIXELS": "1000", "CROPCLF_MAX_PIXELS": "20000"}, tmp_path)
    assert out == {"shape": [100, 150, 3], "opencv": "20000"}


@pytest.mark.parametrize("value", ["3000000000", "20000000000"])
def test_limits_beyond_2_to_the_31_do_not_overflow_opencv(big_png, tmp_path, value):
    out = _run(LOAD, {"CROPCLF_MAX_PIXELS": value}, tmp_path)
    assert out == {"shape": [100, 150, 3], "error": None, "opencv": value}


def test_a_lower_opencv_limit_set_by_cv2_imported_first_gets_a_clear_message(big_png, tmp_path):
    """cv2 imported before cropclf has already read its limit: say so instead of 'cannot decode'."""
    code = "import cv2  # before cropclf: OpenCV keeps its 1,000-pixel limit\n" + textwrap.dedent(LOAD)
    out = _run(code, {"OPENCV_IO_MAX_IMAGE_PIXELS": "1000", "CROPCLF_MAX_PIXELS": "20000"}, tmp_path)
    assert out["shape"] is None
    assert "OpenCV's own pixel limit" in out["error"] and "OPENCV_IO_MAX_IMAGE_PIXELS=20000" in out["error"]


@pytest.mark.parametrize("value", ["lots", "-5", "2e9"])
def test_a_bad_limit_is_a_clear_error(tmp_path, value):
    done = subprocess.run([sys.executable, "-c", "import cropclf.data.images"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "CROPCLF_MAX_PIXELS": value,
                                                          "PYTHONPATH": str(REPO)})
    assert done.returncode != 0
    assert f"CROPCLF_MAX_PIXELS must be a positive whole number of pixels. Received: {value!r}" in done.stderr
