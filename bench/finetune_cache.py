"""Benchmark: fine-tuning on the cached frozen prefix vs recomputing it every epoch.

EfficientNet-Lite0 (ImageNet weights), setup II with k = 1 (only the "head" stage and the
readout learn), on ~40 OSIE images when ../shared/data/osie exists (else synthetic 800×600
images with random fixations). Same process, same images, same training settings; the only
difference is ``cache_dir``. The uncached path decodes, preprocesses and runs the 17 frozen
stages for every batch of every epoch; the cached path reads the block15 outputs from Zarr
(built once, timed separately). Prints the per-epoch times; the LAST line is ``speedup N.Nx``.

    .venv/bin/python bench/finetune_cache.py [--images 40] [--epochs 3] [--k 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dissect.backbones import load_backbone  # noqa: E402
from dissect.data.osie import FixationDataset, Stimulus, load_osie  # noqa: E402
from dissect.training import train_readout  # noqa: E402

DATA = Path(os.environ.get("DISSECT_DATA", ROOT.parent / "shared" / "data"))


def synthetic_dataset(folder: Path, n: int, seed: int = 0) -> FixationDataset:
    rng = np.random.default_rng(seed)
    stimuli, rows = [], []
    for k in range(n):
        h, w = 600, 800
        f = folder / f"syn{k:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(f, quality=90)
        stimuli.append(Stimulus(f.stem, f, h, w))
        for s in range(15):
            for o in range(8):
                rows.append((f.stem, s, o, rng.uniform(0, w - 1), rng.uniform(0, h - 1), 250.0))
    fix = pd.DataFrame(rows, columns=["image", "subject", "order", "x", "y", "duration"])
    return FixationDataset.from_table(stimuli, fix, "synthetic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", default="1")
    args = ap.parse_args()
    k = args.k if args.k == "all" else int(args.k)

    bb = load_backbone("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        osie_root = DATA / "osie"
        if (osie_root / "data" / "eye" / "fixations.mat").is_file():
            ds = load_osie(osie_root)
            source = f"OSIE ({osie_root})"
        else:
            ds = synthetic_dataset(tmp, args.images)
            source = "synthetic 800x600 images"
        ids = ds.ids[: args.images]
        n_val = max(1, len(ids) // 10)
        train, val = ids[:-n_val], ids[-n_val:]
        kw = dict(k=k, epochs=args.epochs, lr=1e-3, batch_size=8, seed=0, patience=None,
                  lr_schedule=None)
        print(f"EfficientNet-Lite0 ({bb.weights_id}), k={k}, {source}: "
              f"{len(train)} train + {len(val)} val images, {args.epochs} epochs, "
              f"{__import__('torch').get_num_threads()} threads")

        t0 = time.perf_counter()
        unc = train_readout(bb, ds, train, val, cache_dir=None, **kw)
        t_unc_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        cac = train_readout(bb, ds, train, val, cache_dir=tmp / "cache", **kw)
        t_cac_total = time.perf_counter() - t0
        again = train_readout(bb, ds, train, val, cache_dir=tmp / "cache", **{**kw, "epochs": 1})

        e_unc = float(np.median(unc.history.seconds))
        e_cac = float(np.median(cac.history.seconds))
        diff = float(np.max(np.abs(unc.history.train_loss - cac.history.train_loss)))
        print(f"uncached: {e_unc:.3f} s/epoch (median of {len(unc.history)}), "
              f"run {t_unc_total:.1f} s")
        print(f"cache build: {cac.cache_seconds:.2f} s ({len(ids)} images, "
              f"boundary {Path(str(cac.cache_path)).name}); reopening it: "
              f"{again.cache_seconds:.2f} s")
        print(f"cached:   {e_cac:.3f} s/epoch (median of {len(cac.history)}), "
              f"run {t_cac_total:.1f} s incl. build")
        print(f"max |train loss difference| cached vs uncached: {diff:.2e}")
        print(f"speedup {e_unc / e_cac:.1f}x")


if __name__ == "__main__":
    main()
