"""scripts/benchmark.py --quality: which sets it finds or skips, the heads it reads, and its table."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cropclf.commands.benchmark_quality import discover_heads, discover_sets, format_table, summarise
from cropclf.demo import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]
HEADER = "filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes"


def _region(filename, x, attributes):
    shape = '"{""name"":""rect"",""x"":%d,""y"":4,""width"":20,""height"":12}"' % x
    attrs = '"{' + ",".join(f'""{k}"":""{v}""' for k, v in attributes.items()) + '}"'
    return f'{filename},1,"{{}}",1,0,{shape},{attrs}'


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")


def test_discovery_finds_complete_sets_and_notes_each_absent_one(tmp_path):
    real = tmp_path / "real"
    rows = [_region("a.jpg", 2, {"kind": "cat", "size": "big", "same": "x"}),
            _region("b.jpg", 30, {"kind": "dog", "size": "small", "same": "x"})]
    for name in ("cells", "leaves"):
        _write(real / name / "via_trainval.csv", rows)
        _write(real / name / "via_test.csv", rows)
    _write(real / "half" / "via_trainval.csv", rows)  # no test file: not a set
    notes = []
    sets = discover_sets(real, tmp_path / "no-rice", log=notes.append)

    assert [s.name for s in sets] == ["demo", "cells", "leaves"]
    assert sets[1].test == real / "cells" / "via_test.csv" and sets[1].images == real / "cells"
    assert sets[1].heads == ["kind", "size"]  # read from the file; "same" has one value, nothing to learn
    assert notes == [f"half: skipped, {real / 'half'} lacks via_test.csv",
                     f"rice: skipped, no {tmp_path / 'no-rice' / 'train' / 'via_region_data.csv'}"]


def test_discovery_searches_several_folders_in_order(tmp_path):
    rows = [_region("a.jpg", 2, {"kind": "cat"}), _region("b.jpg", 30, {"kind": "dog"})]
    for root, name in (("shared", "cells"), ("mine", "cells"), ("mine", "faces")):
        _write(tmp_path / root / name / "via_trainval.csv", rows)
        _write(tmp_path / root / name / "via_test.csv", rows)
    notes = []
    sets = discover_sets([tmp_path / "shared", tmp_path / "absent", tmp_path / "mine"], tmp_path / "no-rice",
                         log=notes.append)

    assert [(s.name, s.images) for s in sets[1:]] == [("cells", tmp_path / "shared" / "cells"),
                                                     ("faces", tmp_path / "mine" / "faces")]
    assert notes[:2] == [f"real sets: skipped, {tmp_path / 'absent'} is not a folder",
                         f"cells: skipped, {tmp_path / 'mine' / 'cells'} has the name of a set already found"]


def test_discovery_notes_a_missing_real_sets_folder_and_finds_rice(tmp_path):
    rice = tmp_path / "rice"
    _write(rice / "train" / "via_region_data.csv", [_region("a.jpg", 2, {"class_id": "smut"}),
                                                    _region("b.jpg", 2, {"class_id": "blight"})])
    notes = []
    sets = discover_sets(tmp_path / "absent", rice, log=notes.append)

    assert notes == [f"real sets: skipped, {tmp_path / 'absent'} is not a folder"]
    assert [(s.name, s.heads, s.test) for s in sets] == [("demo", ["name", "type"], None),
                                                          ("rice", ["class_id"], None)]  # own test split
    assert sets[1].train_flags == ["--skip-bad-images"]  # the export names images the folder lacks

    _write(rice / "val" / "via_region_data.csv", [_region("c.jpg", 2, {"class_id": "smut"})])
    rice_set = discover_sets(tmp_path / "absent", rice, log=notes.append)[1]
    assert (rice_set.test, rice_set.test_images) == (rice / "val" / "via_region_data.csv", rice / "val")


def test_a_set_without_a_head_to_learn_is_an_error(tmp_path):
    _write(tmp_path / "via_trainval.csv", [_region("a.jpg", 2, {"kind": "cat"}), _region("b.jpg", 9, {"kind": "cat"})])
    with pytest.raises(Exception,
                       match=r"no region attribute takes two or more values.*Received: attributes \['kind'\]"):
        discover_heads(tmp_path / "via_trainval.csv")


def _row(name, head, seed, acc, f1, learned, minutes=2.0):
    return {"set": name, "seed": seed, "head": head, "regions": 10, "accuracy": acc, "macro_f1": f1,
            "accuracy_interval": [acc - 0.1, acc + 0.05], "macro_f1_interval": [f1 - 0.2, f1 + 0.1],
            "majority": 0.6, "learned": learned, "minutes": minutes}


def test_the_table_gives_mean_spread_interval_baseline_and_verdict_per_set_and_head():
    rows = [_row("bccd", "name", 0, 0.9, 0.8, True, 3.0), _row("bccd", "truncated", 0, 0.7, 0.5, False, 3.0),
            _row("bccd", "name", 1, 1.0, 0.9, True, 5.0), _row("bccd", "truncated", 1, 0.8, 0.7, True, 5.0),
            _row("rice", "class_id", 0, 0.5, 0.4, False, 1.0)]
    table = summarise(rows)

    assert [(t["set"], t["head"], t["seeds"]) for t in table] == [("bccd", "name", 2), ("bccd", "truncated", 2),
                                                                   ("rice", "class_id", 1)]
    assert table[0]["accuracy"] == "0.950 ± 0.071" and table[0]["macro-F1"] == "0.850 ± 0.071"
    assert table[0]["macro-F1 interval"] == "[0.650, 0.950]" and table[0]["majority baseline"] == "0.600"
    assert [t["beats majority"] for t in table] == ["yes (2/2)", "no (1/2)", "no (0/1)"]
    assert table[0]["minutes"] == "4.0" and table[2]["macro-F1"] == "0.400"  # one seed: no spread
    text = format_table(table).splitlines()
    assert text[0].split()[:4] == ["set", "head", "seeds", "accuracy"] and len(text) == 4


@pytest.mark.slow
def test_quality_benchmark_trains_scores_and_writes_the_table(tmp_path):
    csv_path = make_demo_dataset(tmp_path / "demo", n_images=8, image_size=(160, 96), seed=3, progress=False)
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    images = sorted({line.split(",")[0] for line in lines[1:]})
    real = tmp_path / "real" / "tiny"
    real.mkdir(parents=True)
    (real / "images").symlink_to(tmp_path / "demo" / "images")
    for name, keep in (("via_trainval.csv", images[:6]), ("via_test.csv", images[6:])):
        (real / name).write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",")[0] in keep]) + "\n")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "bench"
    argv = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quality", "--real-sets", str(tmp_path / "real"),
            "--rice", str(tmp_path / "no-rice"), "--sets", "tiny", "--seeds", "0", "--epochs", "1",
            "--image-size", "32", "--out", str(out)]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    assert f"rice: skipped, no {tmp_path / 'no-rice' / 'train' / 'via_region_data.csv'}" in proc.stdout
    with open(out / "table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["set"], t["head"]) for t in table] == [("tiny", "name"), ("tiny", "type")]
    for t in table:
        assert 0 <= float(t["macro-F1"]) <= 1 and t["beats majority"].split()[0] in ("yes", "no")
    assert (out / "runs" / "tiny-s0" / "evaluation" / "report.json").is_file()
    assert "| set | head | seeds |" in (out / "table.md").read_text()
    # run again: the scored run is reused, not trained again
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "tiny seed 0: reusing" in again.stdout
