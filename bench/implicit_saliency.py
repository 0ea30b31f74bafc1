"""Implicit saliency S_C: the chunked, batched class gradients vs the straightforward loop (issue
14 goal: ≥ 10× at ≤ 1e-5 relative).

One image (the first OSIE stimulus, sorted ids, from ``../shared/data/osie`` when present, else
a synthetic 600×800 image), EfficientNet-Lite0 with its ImageNet weights, one layer
(``--layer``, default ``block10``), the input resized to ``--size`` (default 128 × 128), the
first ``--classes`` ImageNet classes (default all 1000). Both sides end with ``S_C`` at the
layer's resolution:

- **batched**: :func:`dissect.models.implicit.gradient_statistics` (chunks of ``--chunk``
  classes, one batched backward each, streaming float64 statistics) →
  :func:`~dissect.models.implicit.implicit_map`;
- **loop**: one forward, then N backward passes with ``retain_graph=True``, one per class
  ``i``, of ``F.cross_entropy(z, i)``; ``R_i = |∂J_i/∂f|`` are stacked, and µ, V (population
  variance), the per-map min–max ``V̂`` and ``S_C`` are computed from the stack. Two variants
  (``--baseline`` picks the one of the last line): ``backward`` — ``loss.backward(
  retain_graph=True)`` with ``f.retain_grad()``, as a training-style loop does (every
  parameter's gradient is computed too and the backward runs down to the stem); ``grad`` —
  ``torch.autograd.grad(loss, f, retain_graph=True)``, which runs only the part of the network
  between the layer and the logits (the fairest loop).

Each side runs in a fresh subprocess (``--threads`` torch threads, default 1); its time is the
best of ``--repeat`` runs of the computation alone (the network is loaded and the image
preprocessed beforehand). **Memory**: the peak resident set size of that process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), printed as its rise over the peak after the
setup and a warm-up forward, and in absolute terms. The last line is
``speedup <t_loop / t_batched>x, max abs diff <max |S_batched − S_loop|>``.

    .venv/bin/python bench/implicit_saliency.py [--classes 1000] [--size 128 128]
        [--layer block10] [--chunk 32] [--threads 1] [--repeat 2] [--baseline backward]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dissect.backbones import load_backbone  # noqa: E402
from dissect.models.implicit import DEFAULT_CHUNK, gradient_statistics, implicit_map  # noqa: E402
from dissect.preprocess import Preprocess  # noqa: E402

OSIE = ROOT.parent / "shared" / "data" / "osie"
METHODS = ("batched", "backward", "grad")


def image() -> tuple[np.ndarray, str]:
    if (OSIE / "data" / "eye" / "fixations.mat").is_file():
        from dissect.data import load_osie

        ds = load_osie(OSIE)
        first = sorted(ds.ids)[0]
        return ds.load_image(first), f"OSIE {first}"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:600, 0:800]
    blob = 200 * np.exp(-((yy - 250) ** 2 + (xx - 500) ** 2) / (2 * 60.0**2))
    img = np.clip(blob[..., None] + rng.integers(0, 50, (600, 800, 3)), 0, 255)
    return img.astype(np.uint8), "synthetic 600x800"


def loop_statistics(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor,
                    n: int, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """µ and V of R_i = |∂J_i/∂f| from one forward and n backward passes (stacked R_i)."""
    held: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: held.append(out))
    try:
        z = model(x)
    finally:
        handle.remove()
    f = held[0]
    if how == "backward":
        f.retain_grad()
    rs = []
    for i in range(n):
        loss = F.cross_entropy(z, torch.tensor([i]))
        if how == "backward":
            model.zero_grad(set_to_none=True)
            loss.backward(retain_graph=True)
            g = f.grad
            f.grad = None
        else:
            (g,) = torch.autograd.grad(loss, f, retain_graph=True)
        rs.append(g[0].abs())
    r = torch.stack(rs).double()
    return r.mean(0), r.var(0, unbiased=False)


def run_one(args: argparse.Namespace) -> None:
    """Child process: one method, its best time, its peak memory, its S_C (saved as .npy)."""
    torch.set_num_threads(args.threads)
    bb = load_backbone("efficientnet_lite0")
    x = Preprocess(tuple(args.size))(np.load(Path(args.out) / "image.npy"))
    module = bb.module(args.layer)
    with torch.no_grad():
        bb.model(x)  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        if args.only == "batched":
            mean, var, *_ = gradient_statistics(bb.model, module, x, args.classes, args.chunk)
        else:
            mean, var = loop_statistics(bb.model, module, x, args.classes, args.only)
        s = implicit_map(mean, var)
        best = min(best, time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.save(Path(args.out) / f"{args.only}.npy", s.numpy())
    (Path(args.out) / f"{args.only}.json").write_text(json.dumps(
        {"seconds": best, "peak_mib": peak / 1024, "rise_mib": (peak - base) / 1024,
         "shape": list(mean.shape)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    ap.add_argument("--layer", default="block10")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--baseline", choices=METHODS[1:], default="backward")
    ap.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        run_one(args)
        return

    img, what = image()
    print(f"image: {what}, input {args.size[0]}x{args.size[1]}, layer {args.layer}, "
          f"N = {args.classes} classes, chunk {args.chunk}, {args.threads} thread(s)")
    print("memory: peak RSS (resource ru_maxrss) of a fresh process per method; 'rise' = over "
          "its peak after setup")
    res: dict[str, dict] = {}
    maps: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "image.npy", img)
        for method in ("batched", *METHODS[1:]):
            cmd = [sys.executable, __file__, "--only", method, "--out", tmp,
                   "--classes", str(args.classes), "--size", *map(str, args.size),
                   "--layer", args.layer, "--chunk", str(args.chunk),
                   "--threads", str(args.threads), "--repeat", str(args.repeat)]
            subprocess.run(cmd, check=True)
            res[method] = json.loads((Path(tmp) / f"{method}.json").read_text())
            maps[method] = np.load(Path(tmp) / f"{method}.npy")
            r = res[method]
            print(f"{method:>9}: {r['seconds']:8.3f} s   peak memory rise {r['rise_mib']:8.1f} MiB"
                  f"   (peak {r['peak_mib']:.0f} MiB)   stats {tuple(r['shape'])}")
    for loop in METHODS[1:]:
        d = float(np.abs(maps["batched"] - maps[loop]).max())
        rel = d / float(np.abs(maps[loop]).max())
        print(f"vs loop '{loop}': speedup {res[loop]['seconds'] / res['batched']['seconds']:.2f}x"
              f", max abs diff {d:.3g} (relative {rel:.2g})")
    base = args.baseline
    d = float(np.abs(maps["batched"] - maps[base]).max())
    print(f"speedup {res[base]['seconds'] / res['batched']['seconds']:.1f}x, max abs diff {d:.3g}")


if __name__ == "__main__":
    main()
