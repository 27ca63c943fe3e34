"""Costs grow at most linearly with the number of regions, counted rather than timed.

Reading (CSV, JSON), the label maps and the split are counted in Python function calls (profiler
events, C calls included) and in allocated bytes (tracemalloc's peak) per region at growing sizes; a
batch in Python calls whatever the dataset's size; the patch store in RSS (a file beyond its cap).
The sizes are small (a few thousand regions); ``scripts/benchmark.py --scale`` measures up to a million.
"""

import sys
import tracemalloc

import numpy as np
import pytest

from conftest import regions_frame, write_image
from cropclf.commands.scale import make_scale_dataset
from cropclf.config import CropConfig
from cropclf.data import patches
from cropclf.data.crops import canonical_crop
from cropclf.data.labels import build_label_maps, encode_heads
from cropclf.data.patches import PatchStore
from cropclf.data.sequence import CropSequence
from cropclf.data.splits import split_by_image
from cropclf.via import read_annotations

SIZES = (1000, 3000, 10000)
HEADS = ("name", "type")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    return {n: make_scale_dataset(root / str(n), n) for n in SIZES}


def calls(fn, *args):
    """Python and C function calls made by ``fn(*args)``: a count of work that no neighbour can disturb."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(profile)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
    return count


def peak_bytes(fn, *args):
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_linear(per_region: dict, what: str, tolerance: float = 1.15):
    """Work per region at the largest size is at most ``tolerance`` times that at the smallest (a
    quadratic step would be 10 times it here); fixed costs only make small sizes dearer."""
    small, large = per_region[SIZES[0]], per_region[SIZES[-1]]
    assert large <= tolerance * small, f"{what} per region grows with the size: {per_region}"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_reading_annotations_is_linear_in_calls_and_memory(datasets, fmt):
    work = {n: calls(read_annotations, datasets[n][fmt]) / n for n in SIZES}
    assert_linear(work, f"reading the VIA {fmt.upper()}: calls")
    memory = {n: peak_bytes(read_annotations, datasets[n][fmt]) / n for n in SIZES}
    assert_linear(memory, f"reading the VIA {fmt.upper()}: peak bytes", tolerance=1.3)
    frame = read_annotations(datasets[SIZES[0]][fmt])
    assert len(frame) == SIZES[0] and frame["duplicate"].sum() < SIZES[0] // 100


def test_reading_a_via_csv_stays_lean_per_region(datasets):
    """The goal is a million regions in <= 60 s and <= 6 GB: ~2.4 kB of peak allocations and ~82 calls
    a region here (the reader made ~219 calls a region before its fast paths)."""
    n = SIZES[-1]
    assert peak_bytes(read_annotations, datasets[n]["csv"]) / n < 3000
    assert calls(read_annotations, datasets[n]["csv"]) / n < 120


def test_label_maps_and_split_are_linear(datasets):
    frames = {n: read_annotations(datasets[n]["csv"]) for n in SIZES}

    def labels_and_split(frame):
        maps = build_label_maps(frame, HEADS)
        encode_heads(frame, maps)
        split_by_image(frame, HEADS)

    assert_linear({n: calls(labels_and_split, frames[n]) / n for n in SIZES}, "label maps and split: calls")


def test_a_batch_costs_the_same_whatever_the_dataset_size(datasets):
    """Per-batch work is constant: the same calls for a batch of 64 at 1,000 and 10,000 regions (the
    epoch's permutation is drawn once, by the epoch's first batch)."""
    crop = CropConfig(image_size=(16, 16))
    per_batch = {}
    for n in (SIZES[0], SIZES[-1]):
        frame = read_annotations(datasets[n]["csv"])
        seq = CropSequence(frame, build_label_maps(frame, HEADS), 64, crop, shuffle=True, progress=False)
        seq.set_epoch(1)
        seq[0]
        per_batch[n] = [calls(seq.__getitem__, i) for i in (1, 2, len(seq) // 2, len(seq) - 2)]
    assert max(per_batch[SIZES[-1]]) <= 1.02 * min(per_batch[SIZES[0]]), per_batch


@pytest.fixture(scope="module")
def noise_image(tmp_path_factory):
    image = (np.random.default_rng(5).integers(0, 2, (130, 170, 3)) * 255).astype(np.uint8)
    return image, str(write_image(tmp_path_factory.mktemp("noise") / "noise.png", image))


# shrinking, enlarging, mixed, partly outside, fractional: (x, y, w, h)
BOXES = [(10, 12, 90, 70), (3.5, 7.25, 9, 11), (40, 5, 120, 8), (-20, 100, 60, 50), (150.5, -9.5, 40.2, 33.3),
         (60.7, 60.2, 33, 66.6), (0, 0, 170, 130)]


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("pad_value", [0, 200])
def test_patches_without_jitter_room_are_the_canonical_crop(noise_image, resize, pad_value):
    """Without jitter room a patch is its margin window resized; when both axes shrink (area
    averages), its crop is exactly `canonical_crop`, otherwise within a grey level, and the patches
    are those of the general (chunked) resampling."""
    image, path = noise_image
    frame = regions_frame([{"path": path, "x": x, "y": y, "width": w, "height": h, "name": "a", "type": "b"}
                           for x, y, w, h in BOXES])
    store = PatchStore(frame, (24, 20), 0.15, 0.0, resize, pad_value=pad_value, progress=False)
    assert len(store) == len(BOXES)
    for s, box in enumerate(BOXES):
        ref = canonical_crop(image, box, (24, 20), 0.15, resize, pad_value).astype(int)
        diff = np.abs(store.canonical(s).astype(int) - ref).max()
        assert diff <= (0 if store.area[s] else 1), (box, diff)
    general = patches.INTEGRAL_MAX_PIXELS
    try:
        patches.INTEGRAL_MAX_PIXELS = 0  # every window takes the general, chunked path
        chunked = PatchStore(frame, (24, 20), 0.15, 0.0, resize, pad_value=pad_value, progress=False)
    finally:
        patches.INTEGRAL_MAX_PIXELS = general
    assert np.abs(store.buffer.astype(int) - chunked.buffer).max() <= 1


@pytest.mark.parametrize("memory_mb", [0, 0.02, 1000])
def test_patches_beyond_the_cap_go_to_the_file_and_read_back_the_same(noise_image, tmp_path, memory_mb):
    _, path = noise_image
    frame = regions_frame([{"path": path, "x": x, "y": y, "width": w, "height": h, "name": "a", "type": "b"}
                           for x, y, w, h in BOXES * 3])
    ram = PatchStore(frame, (24, 20), 0.15, 0.2, progress=False)
    store = PatchStore(frame, (24, 20), 0.15, 0.2, memory_mb=memory_mb, cache_dir=tmp_path, progress=False)
    assert store.nbytes == ram.nbytes and not ram.on_disk
    in_ram = int(store.offsets[store.ram_slots])
    assert in_ram <= memory_mb * 2**20 < in_ram + (store.offsets[store.ram_slots + 1] - in_ram
                                                   if store.ram_slots < len(store) else np.inf)
    assert store.disk_nbytes == store.nbytes - in_ram and store.on_disk == (store.disk_nbytes > 0)
    if 0 < store.ram_slots < len(store):
        assert "file on disk" in store.describe()
    for s in range(len(store)):
        np.testing.assert_array_equal(store.patch(s), ram.patch(s))
        np.testing.assert_array_equal(store.canonical(s), ram.canonical(s))
    store.close()


def _rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_a_spilled_store_keeps_rss_bounded(datasets, tmp_path):
    """An epoch over patches in the file does not bring them all into the process's RSS (a memory
    mapping would: every page it touched stays counted)."""
    frame = read_annotations(datasets[SIZES[-1]]["csv"])
    store = PatchStore(frame, (48, 48), 0.15, 0.0, memory_mb=0, cache_dir=tmp_path, progress=False)
    assert store.disk_nbytes > 40 * 2**20  # 10,000 patches of up to 48x48: ~47 MiB, all in the file
    before = _rss_mib()
    total = 0
    for s in range(len(store)):
        total += int(store.patch(s)[0, 0, 0])
    grown = _rss_mib() - before
    store.close()
    assert grown < 0.25 * store.disk_nbytes / 2**20, f"RSS grew {grown:.0f} MiB reading {store.disk_nbytes / 2**20:.0f}"
