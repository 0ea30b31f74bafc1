"""Benchmark: can a training step of the k = all readout run faster on CPU with channels-last
memory or bfloat16 autocast, and how far do their gradients move from float32?

EfficientNet-Lite0 (ImageNet weights), one fixed batch of ``--batch`` OSIE images (synthetic
800×600 images when OSIE is absent), the readout with every trunk stage tuned (k = all: the
stage that dominates training time). For each variant, ``--steps`` timed forward + −NSS loss +
backward passes (after one warm-up), and the relative L2 difference of the full gradient
vector from the float32 one (same weights, same batch). One process, one run: the LAST line is
``speedup channels_last N.NNx, bf16 N.NNx, bf16+channels_last N.NNx; grad rel. error bf16
N.Ne-N`` (float32 seconds / variant seconds).

    .venv/bin/python bench/train_precision.py [--batch 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_epoch import DATA, synthetic_dataset  # noqa: E402

from dissect.backbones import load_backbone  # noqa: E402
from dissect.data.osie import load_osie  # noqa: E402
from dissect.models.readout import SaliencyReadout, _load_inputs  # noqa: E402
from dissect.training import _Targets, nss_loss  # noqa: E402


def step(model, x, targets, ids, *, bf16: bool, channels_last: bool) -> torch.Tensor:
    """One forward + backward; returns the flattened gradient (float64)."""
    model.zero_grad(set_to_none=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        maps = model.forward_from(x, 0)
    loss = nss_loss(maps.float(), *targets.batch(ids))
    loss.backward()
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters()
                      if p.grad is not None])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    bb = load_backbone("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        osie = DATA / "osie"
        if (osie / "data" / "eye" / "fixations.mat").is_file():
            ds = load_osie(osie)
        else:
            ds = synthetic_dataset(Path(tmp), args.batch)
        ids = ds.ids[: args.batch]
        targets = _Targets(ds, ids, True)
        torch.manual_seed(0)
        model = SaliencyReadout(bb, "all")
        model.train()
        x = _load_inputs(model, ds, ids)
        print(f"k=all, batch {len(ids)} at {tuple(x.shape[2:])}, {torch.get_num_threads()} "
              f"threads, {args.steps} timed steps per variant")
        variants = {"float32": (False, False), "channels_last": (False, True),
                    "bf16": (True, False), "bf16+channels_last": (True, True)}
        secs, grads = {}, {}
        for name, (bf16, cl) in variants.items():
            m = model.to(memory_format=torch.channels_last) if cl else model.to(
                memory_format=torch.contiguous_format)
            grads[name] = step(m, x, targets, ids, bf16=bf16, channels_last=cl)  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(m, x, targets, ids, bf16=bf16, channels_last=cl)
            secs[name] = (time.perf_counter() - t0) / args.steps
            err = float((grads[name] - grads["float32"]).norm() / grads["float32"].norm())
            print(f"{name:>20}: {secs[name]:.3f} s/step, gradient rel. L2 error {err:.2e}")
        ref = secs["float32"]
        e = float((grads["bf16"] - grads["float32"]).norm() / grads["float32"].norm())
        print(f"speedup channels_last {ref / secs['channels_last']:.2f}x, bf16 "
              f"{ref / secs['bf16']:.2f}x, bf16+channels_last "
              f"{ref / secs['bf16+channels_last']:.2f}x; grad rel. error bf16 {e:.1e}")


if __name__ == "__main__":
    main()
