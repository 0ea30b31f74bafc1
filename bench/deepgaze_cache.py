"""One DeepGaze I training epoch on cached features vs recomputing the trunk (issue goal ≥ 5×).

Both sides train :func:`dissect.models.deepgaze.train_deepgaze` for one epoch on the same
images with EfficientNet-Lite0 (ImageNet weights), the same layers (``--layers``, default
"block12 and above") and the same grid:

- **cached**: the trunk's features are computed once (time reported separately as ``cache``)
  and the trainer reads them from an in-memory mapping ``id → (C, h, w)``, as it will read the
  activation cache;
- **recompute**: the trainer's ``features_fn`` runs the trunk for every batch (preprocess →
  :class:`dissect.capture.LayerCapture` → :func:`dissect.models.deepgaze.to_grid`). Images are
  decoded once beforehand, so decoding is *not* charged to this side (the ratio is a lower
  bound).

The epoch time is the history's ``seconds`` of epoch 1 (training batches + validation pass;
the normaliser fit before it is excluded on both sides). Input: each image resized to half its
size keeping its aspect ratio (300 × 400 for OSIE's 600 × 800, DeepGaze I's downsampling by 2).
Images: the first ``--images`` (default 20) OSIE stimuli (sorted ids) from
``../shared/data/osie``, else synthetic 600×800 images with random fixations. The last line is
``speedup <ratio>``.

    .venv/bin/python bench/deepgaze_cache.py [--images 20] [--grid 38 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dissect.backbones import load_backbone  # noqa: E402
from dissect.capture import LayerCapture  # noqa: E402
from dissect.models.deepgaze import to_grid, train_deepgaze  # noqa: E402
from dissect.preprocess import Preprocess  # noqa: E402

OSIE = ROOT.parent / "shared" / "data" / "osie"
DEFAULT_LAYERS = ["block12", "block13", "block14", "block15", "head"]


def data(n: int) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, tuple[int, int]]],
                          str]:
    if (OSIE / "data" / "eye" / "fixations.mat").is_file():
        from dissect.data import load_osie

        ds = load_osie(OSIE)
        ids = sorted(ds.ids)[:n]
        imgs = {i: ds.load_image(i) for i in ids}
        fix = {i: (ds.points(i, drop_first=True), ds[i].size) for i in ids}
        return imgs, fix, f"{n} OSIE images"
    rng = np.random.default_rng(0)
    imgs, fix = {}, {}
    for k in range(n):
        i = f"{k:04d}"
        imgs[i] = rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8)
        fix[i] = (np.column_stack([rng.uniform(0, 799, 60), rng.uniform(0, 599, 60)]), (600, 800))
    return imgs, fix, f"{n} synthetic 600x800 images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--grid", type=int, nargs=2, default=(38, 50))
    ap.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    imgs, fix, what = data(args.images)
    ids = sorted(imgs)
    n_val = max(1, len(ids) // 5)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    grid = tuple(args.grid)
    backbone = load_backbone("efficientnet_lite0")
    capture = LayerCapture(backbone, args.layers)

    def trunk(batch_ids: list[str]) -> torch.Tensor:
        h, w = imgs[batch_ids[0]].shape[:2]
        pre = Preprocess(size=(h // 2, w // 2))  # aspect ratio kept, DeepGaze I's factor 2
        acts = capture.attribute(pre([imgs[i] for i in batch_ids]))
        return torch.cat([to_grid(acts[layer], grid) for layer in capture.layers], dim=1)

    t0 = time.perf_counter()
    cache = {}
    for b in range(0, len(ids), args.batch_size):
        chunk = ids[b : b + args.batch_size]
        for i, f in zip(chunk, trunk(chunk), strict=True):
            cache[i] = f.clone()
    cache_s = time.perf_counter() - t0
    centre = torch.zeros(grid)  # uniform prior: the comparison is about the feature path

    common = dict(epochs=1, lr=0.01, l1=1e-3, batch_size=args.batch_size, seed=0, patience=None)
    cached = train_deepgaze(cache, centre, train_ids, val_ids, fix, **common)
    recomputed = train_deepgaze(trunk, centre, train_ids, val_ids, fix, **common)
    t_cached = float(cached.history["seconds"].iloc[0])
    t_recomputed = float(recomputed.history["seconds"].iloc[0])
    same = torch.allclose(cached.model.weights, recomputed.model.weights, rtol=1e-4, atol=1e-6)
    print(f"{what}; layers {capture.layers}; grid {grid}; {cached.model.n_channels} channels; "
          f"{args.threads} threads")
    print(f"cache build (once)    {cache_s:8.3f} s")
    print(f"epoch, cached         {t_cached:8.3f} s")
    print(f"epoch, recomputed     {t_recomputed:8.3f} s")
    print(f"same weights after the epoch: {same}")
    print(f"speedup {t_recomputed / t_cached:.1f}")


if __name__ == "__main__":
    main()
