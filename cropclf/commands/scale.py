"""How cropclf's own costs grow with the number of regions: `scripts/benchmark.py --scale 10000,100000`.

For each size a synthetic dataset is written to a temporary folder (many small JPEGs, ``BOXES_PER_IMAGE``
boxes on each, two labelled heads; a few distinct images written under many names, so a million regions
take a minute to make), then every step runs in a fresh Python process, so the peak RSS it reports is
that step's own (its imports included, shown on their own row):

* reading the annotations, VIA CSV and VIA JSON (`read_annotations`);
* the label maps and the split (`build_label_maps`, `split_by_image`), from the frame pickled by the CSV step;
* the patch store's decoding pass on one thread (`PatchStore`, RAM up to ``--cache-mb``, the rest in a
  file under the temporary folder), then a first and a later epoch of `CropSequence` crops, and the
  per-batch overhead outside the crop itself (the crop replaced by a copy of a ready array).

Only the standard library, numpy, pandas and cv2 here: the steps import what they measure.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BOXES_PER_IMAGE = 100
IMAGE_SIZE = (320, 240)  # (width, height): small images, so the decoding pass is mostly regions
DISTINCT_IMAGES = 16  # distinct pictures, each written under many file names
NAMES, TYPES = ("circle", "ellipse", "square", "star", "triangle"), ("blue", "green", "red", "yellow")
CROP_SIZE = (32, 32)  # small crops keep a million patches at ~3 GB
BATCH = 64
OVERHEAD_BATCHES = 300  # batches timed with the crop stubbed out


# --- the synthetic dataset ---------------------------------------------------------------------


def make_scale_dataset(folder, regions: int, seed: int = 0) -> dict:
    """Writes ``regions`` boxes on ``ceil(regions / BOXES_PER_IMAGE)`` JPEGs, as a VIA 2 CSV and JSON.

    Returns ``{"csv": path, "json": path, "images": n}``.
    """
    import cv2

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, regions])
    width, height = IMAGE_SIZE
    blobs = []
    for _ in range(DISTINCT_IMAGES):  # blocky noise: sharp edges, a realistic JPEG size
        small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
        blobs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    n_images = -(-regions // BOXES_PER_IMAGE)
    names = [f"img_{i:07d}.jpg" for i in range(n_images)]
    for i, name in enumerate(names):
        (folder / "images" / name).write_bytes(blobs[i % DISTINCT_IMAGES])
    # boxes of 6-80 px, partly over the edges (padding), the crops both shrink and enlarge them
    w = rng.integers(6, 80, regions)
    h = rng.integers(6, 80, regions)
    x = rng.integers(-8, width - 4, regions)
    y = rng.integers(-8, height - 4, regions)
    name_ids, type_ids = rng.integers(0, len(NAMES), regions), rng.integers(0, len(TYPES), regions)
    image_of = np.arange(regions) // BOXES_PER_IMAGE

    csv_path, json_path = folder / "regions.csv", folder / "regions.json"
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        f.write("filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,"
                "region_attributes\n")
        for k in range(regions):
            i = image_of[k]
            f.write(f'images/{names[i]},{len(blobs[i % DISTINCT_IMAGES])},"{{}}",'
                    f'{min(BOXES_PER_IMAGE, regions - i * BOXES_PER_IMAGE)},{k % BOXES_PER_IMAGE},'
                    f'"{{""name"":""rect"",""x"":{x[k]},""y"":{y[k]},""width"":{w[k]},""height"":{h[k]}}}",'
                    f'"{{""name"":""{NAMES[name_ids[k]]}"",""type"":""{TYPES[type_ids[k]]}""}}"\n')
    with open(json_path, "w", encoding="utf-8") as f:
        f.write("{")
        for i, name in enumerate(names):
            ks = range(i * BOXES_PER_IMAGE, min((i + 1) * BOXES_PER_IMAGE, regions))
            boxes = ",".join(
                f'{{"shape_attributes":{{"name":"rect","x":{x[k]},"y":{y[k]},"width":{w[k]},"height":{h[k]}}},'
                f'"region_attributes":{{"name":"{NAMES[name_ids[k]]}","type":"{TYPES[type_ids[k]]}"}}}}'
                for k in ks)
            size = len(blobs[i % DISTINCT_IMAGES])
            f.write(f'{"," if i else ""}"images/{name}{size}":{{"filename":"images/{name}","size":{size},'
                    f'"regions":[{boxes}],"file_attributes":{{}}}}')
        f.write("}")
    return {"csv": str(csv_path), "json": str(json_path), "images": n_images}


# --- the steps, each in its own process ---------------------------------------------------------


def _peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM``, which starts afresh at exec; getrusage's ``ru_maxrss`` keeps
    the parent's peak across fork and exec, so a child of a process holding TensorFlow would report it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_imports(args: dict) -> dict:
    """The baseline every step's peak RSS includes: Python, numpy, pandas, cv2 (and Keras for the epochs)."""
    import cropclf.via  # noqa: F401
    if args.get("keras"):
        import cropclf.data.sequence  # noqa: F401
    return {"seconds": 0.0}


def step_read(args: dict) -> dict:
    from cropclf.via import read_annotations

    t, cpu = time.perf_counter(), time.process_time()
    frame = read_annotations(args["path"])
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    if args.get("pickle"):
        with open(args["pickle"], "wb") as f:
            pickle.dump(frame, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {"seconds": seconds, "cpu_seconds": cpu, "regions": len(frame)}


def step_labels_split(args: dict) -> dict:
    from cropclf.data.labels import build_label_maps, encode_heads
    from cropclf.data.splits import split_by_image

    with open(args["pickle"], "rb") as f:
        frame = pickle.load(f)
    t, cpu = time.perf_counter(), time.process_time()
    maps = build_label_maps(frame, ("name", "type"))
    encode_heads(frame, maps)
    assignment, _ = split_by_image(frame, ("name", "type"))
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - cpu, "regions": len(frame),
            "images": len(assignment)}


def step_patches(args: dict) -> dict:
    """Decoding pass (1 thread), epoch 1 and 2 crops, and the per-batch overhead outside the crop."""
    from cropclf.config import CropConfig
    from cropclf.data.labels import build_label_maps
    from cropclf.data.patches import PatchStore
    from cropclf.data.sequence import CropSequence

    with open(args["pickle"], "rb") as f:
        frame = pickle.load(f)
    maps = build_label_maps(frame, ("name", "type"))
    crop = CropConfig(image_size=CROP_SIZE)
    rss_start = _peak_rss_mib()
    t, cpu = time.perf_counter(), time.process_time()
    store = PatchStore(frame, crop.image_size, crop.margin, 0.0, crop.resize, crop.min_size, crop.pad_value,
                       memory_mb=args["cache_mb"], cache_dir=args["cache_dir"], threads=1, progress=True)
    decode, decode_cpu = time.perf_counter() - t, time.process_time() - cpu
    seq = CropSequence(frame, maps, BATCH, crop, store=store, progress=False)
    n = len(seq.slots)
    out = {"regions": len(frame), "patches": len(store), "decode_seconds": decode, "decode_cpu_seconds": decode_cpu,
           "store_mib": store.nbytes / 2**20,
           "store_on_disk_mib": getattr(store, "disk_nbytes", store.nbytes if store.on_disk else 0) / 2**20}
    rss_after_store = _peak_rss_mib()
    for epoch in (1, 2):
        seq.set_epoch(epoch)
        t = time.perf_counter()
        crops = sum(len(seq[i][0]) for i in range(len(seq)))
        out[f"epoch{epoch}_seconds"] = time.perf_counter() - t
        assert crops == n
    out["first_epoch_crops_per_s"] = n / (decode + out["epoch1_seconds"])
    out["later_epoch_crops_per_s"] = n / out["epoch2_seconds"]
    out["overhead_ms"] = batch_overhead_ms(seq)
    out["rss_before_store_mib"], out["rss_after_store_mib"] = rss_start, rss_after_store
    store.close()
    return out


def batch_overhead_ms(seq, batches: int = OVERHEAD_BATCHES) -> float:
    """Mean milliseconds per batch outside the crop itself: the crop is replaced by a copy of a ready array.

    Batches are spread over one shuffled epoch (after its first, which draws the epoch's permutation).
    """
    ready = np.zeros((*seq.crop.image_size, 3), np.uint8)
    store, shuffle = seq.store, seq.shuffle
    original = store.canonical
    store.canonical = lambda s: ready  # noqa: ARG005 (the crop itself is what is left out)
    seq.shuffle = True
    try:
        seq.set_epoch(3)
        seq[0]
        picks = np.linspace(1, len(seq) - 1, min(batches, len(seq) - 1)).astype(int) if len(seq) > 1 else [0]
        t = time.perf_counter()
        for i in picks:
            seq[int(i)]
        return (time.perf_counter() - t) / len(picks) * 1000
    finally:
        store.canonical, seq.shuffle = original, shuffle
        seq._order = (None, None)


STEPS = {"imports": step_imports, "read": step_read, "labels_split": step_labels_split, "patches": step_patches}


def child_main(step: str, args_json: str) -> None:
    """Entry of a step's process: runs it and prints its result, with the process's peak RSS, as JSON."""
    cpu = time.process_time()
    result = STEPS[step](json.loads(args_json))
    result["peak_rss_mib"] = _peak_rss_mib()
    result["process_cpu_seconds"] = time.process_time() - cpu  # the whole step, loading its input included
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)


def run_step(step: str, args: dict, timeout: float = 3600) -> dict:
    """Runs a step in a fresh interpreter; its stderr (progress bars) passes through."""
    code = "import sys; from cropclf.commands.scale import child_main; child_main(sys.argv[1], sys.argv[2])"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "TF_CPP_MIN_LOG_LEVEL": "2", "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, step, json.dumps(args)], stdout=subprocess.PIPE,
                          text=True, env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scale step {step!r} failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --- the table ------------------------------------------------------------------------------------


def scale_benchmark(sizes, cache_mb: int = 1024, work_dir=None, steps=("read", "labels_split", "patches"),
                    log=print) -> dict:
    """Measures every step at every size; returns ``{"rows": [...], "sizes": [...]}`` (see `report_scale`)."""
    rows = []

    def add(size, step, seconds, rss, crops_per_s=None, note="", cpu=None):
        rows.append({"regions": size, "step": step, "seconds": seconds, "peak_rss_mib": rss,
                     "crops_per_s": crops_per_s, "note": note, "cpu_seconds": cpu})
        if cpu is not None:  # on a shared machine the wall time also counts the neighbours' work
            note = f"(CPU {cpu:.2f} s) {note}".rstrip()
        rate = f", {crops_per_s:,.0f} crops/s" if crops_per_s else ""
        log(f"    {step}: {seconds:.2f} s, peak RSS {rss:,.0f} MiB{rate} {note}".rstrip(), flush=True)

    base = run_step("imports", {})
    add(0, "imports only (python, numpy, pandas, cv2)", 0.0, base["peak_rss_mib"])
    if "patches" in steps:
        keras_base = run_step("imports", {"keras": True})
        add(0, "imports only, with Keras (the patch/epoch step)", 0.0, keras_base["peak_rss_mib"])
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="cropclf-scale-", dir=work_dir) as tmp:
            log(f"{size:,} regions: writing the synthetic dataset ...", flush=True)
            t = time.perf_counter()
            data = make_scale_dataset(tmp, size)
            log(f"    {data['images']:,} images of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, "
                f"{BOXES_PER_IMAGE} boxes each ({time.perf_counter() - t:.1f} s)", flush=True)
            frame_pickle = str(Path(tmp) / "frame.pkl")
            if "read" in steps or "labels_split" in steps or "patches" in steps:
                log("  reading the VIA CSV ...", flush=True)
                r = run_step("read", {"path": data["csv"], "pickle": frame_pickle})
                add(size, "read VIA CSV", r["seconds"], r["peak_rss_mib"], cpu=r["cpu_seconds"])
            if "read" in steps:
                log("  reading the VIA JSON ...", flush=True)
                r = run_step("read", {"path": data["json"]})
                add(size, "read VIA JSON", r["seconds"], r["peak_rss_mib"], cpu=r["cpu_seconds"])
            if "labels_split" in steps:
                log("  label maps, labels and split ...", flush=True)
                r = run_step("labels_split", {"pickle": frame_pickle})
                add(size, "label maps + split (frame unpickled first)", r["seconds"], r["peak_rss_mib"],
                    cpu=r["cpu_seconds"])
            if "patches" in steps:
                log("  patch store (1 decode thread), two epochs, per-batch overhead ...", flush=True)
                cache_dir = str(Path(tmp) / "cache")
                r = run_step("patches", {"pickle": frame_pickle, "cache_mb": cache_mb, "cache_dir": cache_dir})
                where = (f"{r['store_mib']:,.0f} MiB of patches, {r['store_on_disk_mib']:,.0f} MiB of them "
                         f"in the cache file (cap {cache_mb} MiB)")
                add(size, "decoding pass into the patch store (1 thread)", r["decode_seconds"],
                    r["rss_after_store_mib"], r["patches"] / r["decode_seconds"], where, cpu=r["decode_cpu_seconds"])
                add(size, "first epoch (decoding pass + crops)", r["decode_seconds"] + r["epoch1_seconds"],
                    r["peak_rss_mib"], r["first_epoch_crops_per_s"])
                add(size, "later epoch (crops)", r["epoch2_seconds"], r["peak_rss_mib"],
                    r["later_epoch_crops_per_s"])
                add(size, "per-batch overhead outside the crop (ms/batch)", r["overhead_ms"] / 1000,
                    r["peak_rss_mib"], None, f"{r['overhead_ms']:.3f} ms per batch of {BATCH}")
    return {"rows": rows, "sizes": list(sizes), "cache_mb": cache_mb, "boxes_per_image": BOXES_PER_IMAGE,
            "image_size": list(IMAGE_SIZE), "crop_size": list(CROP_SIZE), "batch": BATCH}


def report_scale(result: dict, out=print) -> None:
    out(f"\n{'regions':>10}  {'step':<50}{'seconds':>9}{'peak RSS MiB':>14}{'crops/s':>10}  note")
    for r in result["rows"]:
        size = f"{r['regions']:,}" if r["regions"] else "-"
        rate = f"{r['crops_per_s']:,.0f}" if r["crops_per_s"] else ""
        note = "; ".join(filter(None, [f"CPU {r['cpu_seconds']:.2f} s" if r.get("cpu_seconds") is not None
                                       else "", r["note"]]))
        out(f"{size:>10}  {r['step']:<50}{r['seconds']:>9.2f}{r['peak_rss_mib']:>14,.0f}{rate:>10}  {note}")
