"""scripts/benchmark.py --quick runs end to end and reports every variant (speed is never asserted)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCES = ["baseline: tutorial generator", "decode-once limit: cv2, 1 thread"]
COMBOS = [(workers, aug, epochs) for workers in ("1 worker", "2 workers") for aug in ("no aug", "aug")
          for epochs in ("epoch 1", "epochs 2-3")]
INFERENCE = ["serving_default, batch 1", "serving_default, batch 64",
             "classify_regions, 64 boxes on 1280x720"]


@pytest.mark.slow
def test_quick_benchmark_reports_every_variant(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick",
                           "--out-json", str(out)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    names = list(result["variants"])
    assert names[:2] == REFERENCES
    for workers, aug, epochs in COMBOS:  # every combination, whatever the decode threads
        pattern = rf"CropSequence, {workers}, {aug}, \d+ decode threads?, {epochs}$"
        assert any(re.match(pattern, n) for n in names), (workers, aug, epochs, names)
    assert any(re.match(r"CropSequence, 1 worker, no aug, 1 decode thread, epoch 1$", n) for n in names)
    for name, v in result["variants"].items():
        assert all(v[k] > 0 for k in ("crops_per_s", "x_baseline", "x_decode_limit")), name
    assert list(result["inference_regions_per_s"]) == INFERENCE
    assert all(v > 0 for v in result["inference_regions_per_s"].values())
    assert result["memory"]["peak_rss_mib"] > 0
    assert all(v > 0 for v in result["memory"]["patch_store_mib"].values())
    assert [type(g["pass"]) for g in result["goals"]] == [bool, bool]
    assert "PASS" in proc.stdout or "FAIL" in proc.stdout


SCALE_STEPS = ["read VIA CSV", "read VIA JSON", "label maps + split (frame unpickled first)",
               "decoding pass into the patch store (1 thread)", "first epoch (decoding pass + crops)",
               "later epoch (crops)", "per-batch overhead outside the crop (ms/batch)"]


@pytest.mark.slow
def test_scale_mode_measures_every_step_at_every_size(tmp_path):
    out = tmp_path / "scale.json"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--scale", "300,900",
                           "--cache-mb", "0", "--work-dir", str(tmp_path), "--out-json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    for size in (300, 900):
        assert [r["step"] for r in rows if r["regions"] == size] == SCALE_STEPS
        for r in rows:
            if r["regions"] == size:
                assert r["seconds"] >= 0 and r["peak_rss_mib"] > 0, r
        rates = {r["step"]: r["crops_per_s"] for r in rows if r["regions"] == size}
        assert all(rates[s] > 0 for s in SCALE_STEPS[3:6]), rates
        disk = next(r for r in rows if r["regions"] == size and r["step"] == SCALE_STEPS[3])
        assert " 0 MiB of them in the cache file" not in disk["note"]  # cap 0: every patch in the file
    assert "per-batch overhead" in proc.stdout and "peak RSS MiB" in proc.stdout
    assert not any(p.name.startswith("cropclf-scale-") for p in tmp_path.iterdir())  # temporary data removed


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--scale", "ten"], ["--scale", "100", "--scale-steps", "read,train"]])
def test_scale_mode_refuses_bad_flags(flags):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), *flags], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert re.search(r"^error: --scale takes region counts .*Received: --scale", proc.stderr, re.M), proc.stderr
