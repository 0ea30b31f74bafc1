"""Overhead of the extraction stage over a bare forward loop (issue goal: ≤ 1.15×).

Both sides run EfficientNet-Lite0 (real ImageNet weights) on the same images in the same process:

- **stage**: `dissect.stages.extract.extract_store` exactly as ``dissect extract`` calls it
  (local scheduler, ``extract.batch_size`` / ``extract.dtype`` and ``backbone.layers`` of
  ``pipelines/params.yaml``) into a fresh Zarr store: shape probe, store creation, hooks at every
  layer, float16 conversion and finiteness check, chunk writes, done flags;
- **bare**: load each image, preprocess, run the trunk up to the deepest layer under
  ``torch.no_grad`` and discard the result, in batches of the same size.

The two alternate ``--repeat`` times and the best of each is kept. Images: the first ``--images``
(default 200, the size of the pipeline's held-out set, so the one-off store setup weighs as in
the real stage) OSIE stimuli (sorted ids) when ``../shared/data/osie`` exists, else synthetic
600×800 JPEGs.
``--breakdown`` adds serial timings of each part of the stage. The last line is
``overhead <ratio>``.

    .venv/bin/python bench/extraction_overhead.py [--images 200] [--repeat 3] [--breakdown]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dissect.config import load_params  # noqa: E402
from dissect.data import FixationDataset, Stimulus, load_osie  # noqa: E402
from dissect.stages.extract import extract_store  # noqa: E402

OSIE = ROOT.parent / "shared" / "data" / "osie"


def images(n: int, tmp: Path) -> tuple[FixationDataset, str]:
    if (OSIE / "data" / "eye" / "fixations.mat").is_file():
        ds = load_osie(OSIE)
        return ds.subset(sorted(ds.ids)[:n]), f"{n} OSIE images"
    from PIL import Image

    rng = np.random.default_rng(0)
    stimuli, rows = [], []
    for k in range(n):
        img = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
        path = tmp / f"{k:04d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        stimuli.append(Stimulus(f"{k:04d}", path, 600, 800))
        rows.append((f"{k:04d}", 0, 0, 400.0, 300.0, 200.0))
    fix = pd.DataFrame(rows, columns=["image", "subject", "order", "x", "y", "duration"])
    return FixationDataset.from_table(stimuli, fix, "synthetic"), f"{n} synthetic 600x800 JPEGs"


def bare_loop(dataset, backbone, layers, batch_size: int) -> None:
    """Load, preprocess, run the trunk up to the deepest layer, discard."""
    trunk = backbone.trunk(backbone.stage_of(layers[-1]))
    ids = list(dataset.ids)
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            x = backbone.preprocess([dataset.load_image(j) for j in ids[i : i + batch_size]])
            trunk(x)


def breakdown(dataset, backbone, layers, batch: int, dtype: str, store: Path) -> None:
    """Time each part of what `extract_batch` does, serially, with the cache's own functions."""
    from dissect import cache
    from dissect.capture import LayerCapture

    parts: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return out

    plan = timed("prepare_cache (probe + create)", cache.prepare_cache, dataset, backbone,
                 layers, store, batch_size=batch, dtype=dtype)
    trunk = backbone.trunk(backbone.stage_of(layers[-1]))
    for b in range(plan.n_batches):
        ids = plan.batch_ids(b)
        imgs = timed("load", lambda ids=ids: [cache._load(dataset, i) for i in ids])
        x = timed("preprocess", plan.preprocess, imgs)
        with torch.no_grad():
            timed("bare trunk forward (reference)", trunk, x)
        acts = timed("forward with hooks", LayerCapture(backbone, plan.layers).attribute, x)
        data = timed(f"to {dtype} + finite check",
                     lambda a=acts, ids=ids: {n: cache._to_numpy(a[n], dtype, n, ids)
                                              for n in plan.layers})
        for n in plan.layers:
            timed("zarr chunk writes", cache._write_block, plan.store, f"act/{n}/activation",
                  b * plan.batch_size, data[n])
        timed("done flag", cache._mark_done, plan.store, b)
    for name, t in parts.items():
        print(f"  {name:34s} {t:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of one stage run, serially")
    args = parser.parse_args()

    params = load_params(overrides={"progress": False, "dask.scheduler": None})
    layers = list(params["backbone"]["layers"])
    batch = int(params["extract"]["batch_size"])
    from dissect.stages import common

    backbone = common.backbone(params)
    tmp = Path(tempfile.mkdtemp(prefix="extract_bench_"))
    try:
        dataset, what = images(args.images, tmp)
        runs = iter(range(1_000_000))

        def stage() -> Path:  # a fresh store each time (the previous one is removed untimed)
            return extract_store(params, dataset, backbone, layers, tmp / f"pt{next(runs)}.zarr")

        bare_loop(dataset, backbone, layers, batch)  # warm-up: page cache, torch kernels
        times: dict[str, list[float]] = {"bare": [], "stage": []}
        for _ in range(args.repeat):
            for name, fn in (("bare", lambda: bare_loop(dataset, backbone, layers, batch)),
                             ("stage", stage)):
                t0 = time.perf_counter()
                store = fn()
                times[name].append(time.perf_counter() - t0)
                if store is not None:
                    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
                    shutil.rmtree(store)
        if args.breakdown:
            breakdown(dataset, backbone, layers, batch, params["extract"]["dtype"], tmp / "bd")
        bare, staged = min(times["bare"]), min(times["stage"])
        print(f"{what}, {backbone.name}, layers {layers}, batch {batch}, "
              f"{params['extract']['dtype']}, torch threads {torch.get_num_threads()}")
        print("bare  " + " ".join(f"{t:.2f}" for t in times["bare"]) + f" s (best {bare:.2f})")
        print("stage " + " ".join(f"{t:.2f}" for t in times["stage"]) + f" s (best {staged:.2f})"
              f"; store {size / 1e6:.1f} MB")
        print(f"overhead {staged / bare:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
