"""ML-Net on EfficientNet-Lite0 (frozen trunk): the choices behind ``mlnet`` in params.yaml, in one
run on the same images.

1. **Optimiser.** :func:`dissect.models.mlnet.train_mlnet` for ``--epochs`` epochs (default 4)
   from the same initialisation and data order with the reference's SGD (lr 1e-3, Nesterov
   momentum 0.9, Keras decay) and with Adam (lr 1e-4, same decay): the validation loss after
   each epoch, and the ratio of their final validation losses.
2. **Deep source.** The time of one training step of the head (dropout, 3×3 encoding conv,
   readout, prior, loss, backward, update) on a batch of 10 at 480×640 with the 1432 channels
   of ``head`` (the classifier's 1280-ch expansion) against the 472 of ``block15_out`` (the
   layout used), and their ratio.

Images: the first ``--train`` (100) and ``--val`` (25) images of the OSIE training split's fit /
validation slices (``pipelines/params.yaml``'s split and ``gt``), or synthetic images when OSIE
is absent. Machine-dependent times; compare the ratios.

    .venv/bin/python bench/mlnet_optimizer.py [--train 100] [--val 25] [--epochs 4]
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
from dissect.models.mlnet import MLNet, mlnet_loss, train_mlnet  # noqa: E402


def osie_data(n_train: int, n_val: int, net: MLNet):
    from dissect.config import load_params
    from dissect.stages import common
    from dissect.stages.mlnet import training_data
    from dissect.training import split_train_val

    params = load_params(ROOT / "pipelines" / "params.yaml")
    if not common.osie_available(params):
        return None
    dataset, _ = common.inputs(params)
    t = params["train"]
    fit, val = split_train_val(common.ids_of(params, "train"), float(t["val_fraction"]),
                               int(t["val_seed"]))
    return (*training_data(params, dataset, fit[:n_train], net),
            *training_data(params, dataset, val[:n_val], net))


def synthetic_data(n_train: int, n_val: int, net: MLNet):
    rng = np.random.default_rng(0)
    H, W = net.input_size
    h, w = net.output_size
    yy, xx = np.mgrid[0:h, 0:w]

    def one():
        im = rng.integers(20, 60, size=(H, W, 3)).astype(np.uint8)
        r, c = int(rng.integers(8, H - 40)), int(rng.integers(8, W - 40))
        im[r:r + 32, c:c + 32] = 235
        cy, cx = (r + 16) / 8, (c + 16) / 8
        return im, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)

    tr = [one() for _ in range(n_train)]
    va = [one() for _ in range(n_val)]
    return [a for a, _ in tr], [b for _, b in tr], [a for a, _ in va], [b for _, b in va]


def step_time(channels: int, repeats: int = 3) -> float:
    """Median seconds of one head update on 10 random feature maps of ``channels``."""
    from torch import nn

    torch.manual_seed(0)
    head = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 1, 1), nn.ReLU())
    opt = torch.optim.Adam(head.parameters(), lr=1e-4)
    x = torch.randn(10, channels, 60, 80)
    y = torch.rand(10, 60, 80) + 0.01
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        mlnet_loss(head(x)[:, 0] + 1e-3, y, None).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--val", type=int, default=25)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bb = load_backbone("efficientnet_lite0")
    probe = MLNet.from_backbone(bb, seed=0)
    data = osie_data(a.train, a.val, probe) or synthetic_data(a.train, a.val, probe)
    print(f"{len(data[0])} training / {len(data[2])} validation images, {a.epochs} epochs")
    final = {}
    for opt, lr in (("sgd", 1e-3), ("adam", 1e-4)):
        net = MLNet.from_backbone(bb, seed=0)
        t0 = time.perf_counter()
        _, hist = train_mlnet(net, *data, epochs=a.epochs, batch_size=10, patience=a.epochs,
                              optimizer=opt, lr=lr, seed=0)
        losses = [round(h["val_loss"], 4) for h in hist]
        final[opt] = hist[-1]["val_loss"]
        print(f"{opt:5s} lr {lr:g}: validation loss per epoch {losses} "
              f"({time.perf_counter() - t0:.0f} s)")
    print(f"validation loss sgd / adam after {a.epochs} epochs: {final['sgd'] / final['adam']:.2f}")
    head, b15 = step_time(40 + 112 + 1280), step_time(40 + 112 + 320)
    print(f"head step: {head:.2f} s with head (1432 ch), {b15:.2f} s with block15_out (472 ch)")
    print(f"step time ratio head / block15_out: {head / b15:.2f}")


if __name__ == "__main__":
    main()
