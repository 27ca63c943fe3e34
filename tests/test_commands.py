"""The `cropclf` console command dispatches to the same code as scripts/*.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}


def cropclf(*args):
    return subprocess.run([sys.executable, "-m", "cropclf", *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=120)


@pytest.mark.parametrize("command, script", [("inspect", "inspect_data"), ("predict", "predict"),
                                             ("review", "review")])
def test_command_and_script_take_the_same_flags(command, script):
    done = cropclf(command, "--help")
    by_script = subprocess.run([sys.executable, f"scripts/{script}.py", "--help"], capture_output=True, text=True,
                               env=ENV, cwd=REPO, timeout=120)
    assert done.returncode == 0 == by_script.returncode, done.stderr
    assert done.stdout.startswith(f"usage: cropclf {command} ")
    flags = lambda text: sorted(w for w in text.split() if w.startswith("--"))  # noqa: E731
    assert flags(done.stdout) == flags(by_script.stdout) != []


@pytest.mark.parametrize("args", [(), ("bogus",)])
def test_an_unknown_command_is_one_error_line(args):
    done = cropclf(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "usage: cropclf {train|evaluate|export|predict|inspect|review|benchmark}" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown command. Received: ")


def test_a_bad_flag_value_is_an_error_line_through_the_command(tmp_path):
    done = cropclf("inspect", "--annotations", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: ")
