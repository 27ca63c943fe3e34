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
