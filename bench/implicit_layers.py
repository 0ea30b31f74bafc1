"""The gradient statistics of several layers from one batched pass vs one pass per layer.

The ``extract-implicit`` stage needs µ and V of the class gradients at every layer of
``implicit.layers`` (five, mid to late). :func:`dissect.models.implicit.gradient_statistics_layers`
starts the graph at the first of them and reads the later layers' gradients out of the same
batched backward, so the five layers cost one backward through the tail from the first layer;
the alternative is :func:`~dissect.models.implicit.gradient_statistics` once per layer. One
image (the first OSIE stimulus when present, else a synthetic one), EfficientNet-Lite0 with its
ImageNet weights, the pipeline's 224 × 224 input, the first ``--classes`` classes; both sides in
this process, alternated, best of ``--repeat``. The last line gives the ratio and the largest
difference between the two sides' µ (relative to max |µ|).

    .venv/bin/python bench/implicit_layers.py [--classes 1000] [--threads 2]
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
from dissect.models.implicit import (  # noqa: E402
    DEFAULT_CHUNK,
    gradient_statistics,
    gradient_statistics_layers,
)
from dissect.preprocess import Preprocess  # noqa: E402

LAYERS = ["block10", "block11", "block12", "block14", "block15"]


def image() -> np.ndarray:
    osie = ROOT.parent / "shared" / "data" / "osie" / "data" / "stimuli"
    files = sorted(osie.glob("*.jpg")) if osie.is_dir() else []
    if files:
        from PIL import Image

        return np.asarray(Image.open(files[0]).convert("RGB"))
    return np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = load_backbone("efficientnet_lite0")
    x = Preprocess((224, 224))(image())
    modules = [bb.module(n) for n in LAYERS]
    t_one, t_each = float("inf"), float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        together, _, _ = gradient_statistics_layers(bb.model, modules, x, args.classes,
                                                    DEFAULT_CHUNK)
        t_one = min(t_one, time.perf_counter() - t0)
        t0 = time.perf_counter()
        each = [gradient_statistics(bb.model, m, x, args.classes, DEFAULT_CHUNK)
                for m in modules]
        t_each = min(t_each, time.perf_counter() - t0)
    rel = max(float((a[0] - b[0]).abs().max() / b[0].abs().max())
              for a, b in zip(together, each, strict=True))
    print(f"layers {', '.join(LAYERS)}; N = {args.classes}; 224x224; {args.threads} thread(s)")
    print(f"one pass for all layers: {t_one:.2f} s; one pass per layer: {t_each:.2f} s")
    print(f"speedup {t_each / t_one:.2f}x, max relative diff of mu {rel:.2g}")


if __name__ == "__main__":
    main()
