"""Benchmark: seconds per training epoch of the saliency readouts, and the frozen-prefix cache.

EfficientNet-Lite0 (ImageNet weights), for each k of ``--ks`` (default 0, 6 and all: setup I,
setup II with the top 6 stages tuned, every stage tuned), on ~40 OSIE images when
../shared/data/osie exists (else synthetic 800×600 images with random fixations). Same process,
same images, same training settings; the only difference is ``cache_dir``. The uncached path
decodes, preprocesses and runs the frozen stages for every batch of every epoch; the cached
path reads the prefix-boundary outputs from Zarr (built once, timed separately). Prints the
per-epoch times per k; the LAST line is ``speedup k0 N.Nx, k6 N.Nx, all N.Nx`` (uncached /
cached seconds per epoch; "all" has no frozen prefix beyond the stem, so it shows ~1x).

    .venv/bin/python bench/train_epoch.py [--images 40] [--epochs 3] [--ks 0,6,all]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
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
    ap.add_argument("--ks", default="0,6,all", help="comma-separated k values")
    args = ap.parse_args()
    ks = [k if k == "all" else int(k) for k in args.ks.split(",")]

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
        print(f"EfficientNet-Lite0 ({bb.weights_id}), {source}: {len(train)} train + "
              f"{len(val)} val images, {args.epochs} epochs, "
              f"{__import__('torch').get_num_threads()} threads")
        ratios = []
        for k in ks:
            kw = dict(k=k, epochs=args.epochs, lr=1e-3, batch_size=8, seed=0, patience=None,
                      lr_schedule=None)
            unc = train_readout(bb, ds, train, val, cache_dir=None, **kw)
            cac = train_readout(bb, ds, train, val, cache_dir=tmp / "cache", **kw)
            e_unc = float(np.median(unc.history.seconds))
            e_cac = float(np.median(cac.history.seconds))
            diff = float(np.max(np.abs(unc.history.train_loss - cac.history.train_loss)))
            print(f"k={k}: uncached {e_unc:.3f} s/epoch, cached {e_cac:.3f} s/epoch (medians "
                  f"of {args.epochs}); cache build {cac.cache_seconds:.2f} s "
                  f"(boundary {Path(str(cac.cache_path)).name}); "
                  f"max |train loss difference| {diff:.2e}")
            ratios.append(f"{'all' if k == 'all' else f'k{k}'} {e_unc / e_cac:.1f}x")
        print("speedup " + ", ".join(ratios))


if __name__ == "__main__":
    main()
