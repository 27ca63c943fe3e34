import json

import numpy as np
import pytest

from conftest import regions_frame
from cropclf.config import Config
from cropclf.errors import ConfigError, LabelError
from cropclf.data.labels import LabelMap, build_label_maps, encode_heads, label_maps_to_json, load_label_maps
from cropclf.data.splits import split_by_image, split_counts


def frame_of(n_images, per_image, labels, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        for _ in range(per_image):
            rows.append({"path": f"/d/img{i:03d}.jpg", "x": 1, "y": 1, "width": 5, "height": 5,
                         "name": labels[int(rng.integers(len(labels)))], "type": "t" + str(i % 2)})
    return regions_frame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_by_image_and_seeded(seed):
    frame = frame_of(40, 3, list("abcd"))
    a, _ = split_by_image(frame, ["name", "type"], (0.7, 0.15, 0.15), seed)
    b, _ = split_by_image(frame, ["name", "type"], (0.7, 0.15, 0.15), seed)
    assert a == b and set(a) == set(frame["path"])
    assert sorted(list(a.values()).count(s) for s in ("train", "val", "test")) == [6, 6, 28]
    c, _ = split_by_image(frame, ["name", "type"], (0.7, 0.15, 0.15), seed + 10)
    assert c != a


def test_rare_class_is_kept_in_training():
    plain = frame_of(30, 2, list("ab"))
    frame = plain.copy()
    frame.loc[frame.index[-1], "name"] = "rare"  # one region, on one image
    for seed in range(10):
        assignment, notes = split_by_image(frame, ["name"], (0.5, 0.25, 0.25), seed)
        rare_image = frame.loc[frame["name"] == "rare", "path"].iloc[0]
        assert assignment[rare_image] == "train"
        before, _ = split_by_image(plain, ["name"], (0.5, 0.25, 0.25), seed)
        assert sorted(assignment.values()) == sorted(before.values())  # sizes kept
        assert any("'rare'" in n for n in notes if "split has no example" in n)


def test_split_counts_table():
    frame = frame_of(10, 2, list("ab"))
    assignment, _ = split_by_image(frame, ["name"], (0.6, 0.2, 0.2), 0)
    table = split_counts(frame, assignment, ["name"])
    assert table[["train", "val", "test"]].to_numpy().sum() == 20


def test_label_map_round_trip_and_unknown_label(tmp_path):
    frame = frame_of(5, 4, ["cat", "dog", "émeu, \"big\""])
    maps = build_label_maps(frame, ["name", "type"])
    assert maps["name"].classes == sorted(set(frame["name"]))
    (tmp_path / "labels.json").write_text(label_maps_to_json(maps))
    again = load_label_maps(tmp_path / "labels.json")
    assert again["name"].classes == maps["name"].classes
    with pytest.raises(LabelError, match=r"label 'horse' at test.csv row 2 was never seen in training"):
        again["name"].encode(["horse"], where=["test.csv row 2"])
    assert list(again["name"].encode(["horse", "", "cat"], unknown="mark")) == [-2, -1, 0]
    ids = encode_heads(frame, maps)
    assert ids["name"].min() >= 0 and len(ids["type"]) == len(frame)


def test_missing_head_is_a_clear_error():
    frame = frame_of(2, 1, ["a"])
    with pytest.raises(LabelError, match="no attribute 'colour' to use as a head"):
        build_label_maps(frame, ["colour"])


def test_head_with_no_labelled_region():
    frame = frame_of(2, 1, ["a"])
    frame["name"] = ""
    with pytest.raises(LabelError, match="has no labelled region"):
        LabelMap.from_frame(frame, "name")


def test_config_round_trip_and_overrides(tmp_path):
    cfg = Config().replace(**{"train.epochs": 3, "crop.image_size": [48, 96]})
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert Config.from_file(path) == cfg and cfg.crop.image_size == (48, 96)


@pytest.mark.parametrize("d, match", [
    ({"trian": {}}, r"unknown config section\(s\) \['trian'\]"),
    ({"train": {"epoch": 3}}, r"unknown key\(s\) \['epoch'\] in section 'train'"),
    ({"crop": {"resize": "squash"}}, "`crop.resize` must be 'stretch' or 'letterbox'. Received: 'squash'"),
    ({"crop": {"image_size": [4, 4]}}, r"`crop.image_size` must be"),
    ({"data": {"split": [0.5, 0.5, 0.5]}}, "`data.split` must be three fractions"),
    ({"train": {"distribute": "tpu"}}, "`train.distribute` must be one of"),
])
def test_bad_config(d, match):
    with pytest.raises(ConfigError, match=match):
        Config.from_dict(d)


def test_bad_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        Config.from_file(path)
    assert json.loads(Config().to_json())["data"]["heads"] == ["name", "type"]
