"""Tiny backbone and synthetic images for the activation-cache tests, and a script entry point
that runs an extraction in a subprocess and can SIGKILL itself part-way (resumability test).

    python tests/_helpers_cache.py STORE COUNT_FILE KILL   (KILL: none | forward:N | write:N)

``forward:N`` kills the process when the (N+1)-th batch's forward pass starts (N batches done);
``write:N`` kills it right after the N-th chunk write (a batch left half-written).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dissect.backbones import Backbone, state_dict_sha256  # noqa: E402
from dissect.preprocess import Preprocess  # noqa: E402

N_IMAGES = 11
BATCH = 3
LAYERS = ["c1", "c2"]


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def tiny_backbone(seed: int = 0, size: tuple[int, int] | None = (16, 16)) -> Backbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyNet().eval()
    f = model.features
    stages = [("c1", nn.Sequential(f[0], f[1])), ("c2", nn.Sequential(f[2], f[3], f[4]))]
    return Backbone("tiny", model, stages, {"c1": "features.1", "c2": "features.4"},
                    state_dict_sha256(model), Preprocess(size))


class TinyImages:
    """Deterministic synthetic uint8 images of varying sizes."""

    def __init__(self, n: int = N_IMAGES, same_size: bool = False):
        self.ids = [f"img{i:02d}" for i in range(n)]
        self.same_size = same_size

    def load_image(self, image_id: str) -> np.ndarray:
        k = int(image_id[3:])
        rng = np.random.default_rng(k)
        h, w = (20, 24) if self.same_size else (18 + k % 5, 22 + k % 3)
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def png_fixation_dataset(root: Path, sizes: list[tuple[int, int]], n_subjects: int,
                         seed: int, n_fix: int = 4):
    """PNG stimuli ``im0, im1, …`` of the given ``(H, W)`` sizes (random pixels) written under
    ``root``, each with ``n_subjects`` observers × ``n_fix`` uniformly random fixations (order
    0 = the start); everything drawn from ``numpy.random.default_rng(seed)`` image by image."""
    import pandas as pd
    from PIL import Image

    from dissect.data.osie import FixationDataset, Stimulus

    rng = np.random.default_rng(seed)
    stimuli, rows = [], []
    for k, (h, w) in enumerate(sizes):
        f = Path(root) / f"im{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(f)
        stimuli.append(Stimulus(f"im{k}", f, h, w))
        for s in range(n_subjects):
            for o in range(n_fix):
                rows.append((f"im{k}", s, o, rng.uniform(0, w - 1), rng.uniform(0, h - 1), 200.0))
    fix = pd.DataFrame(rows, columns=["image", "subject", "order", "x", "y", "duration"])
    return FixationDataset.from_table(stimuli, fix, "synthetic")


def count_forwards(backbone: Backbone, count_file: Path | None = None) -> list[int]:
    """Count passes through the first conv (every forward, incl. the shape probe)."""
    calls: list[int] = []

    def hook(*_):
        calls.append(1)
        if count_file is not None:
            with open(count_file, "a") as fh:
                fh.write("f\n")

    backbone.model.features[0].register_forward_hook(hook)
    return calls


def main(store: str, count_file: str, kill: str) -> None:
    import dissect.cache as cache

    backbone = tiny_backbone()
    calls = count_forwards(backbone, Path(count_file))
    mode, _, n = kill.partition(":")
    if mode == "forward":
        # calls[0] is the shape probe; batch b's forward is call b + 2
        def killer(*_):
            if len(calls) == int(n) + 2:
                os.kill(os.getpid(), signal.SIGKILL)

        backbone.model.features[0].register_forward_hook(killer)
    elif mode == "write":
        original = cache._write_block
        writes = []

        def write_then_die(*args, **kwargs):
            original(*args, **kwargs)
            writes.append(1)
            if len(writes) == int(n):
                os.kill(os.getpid(), signal.SIGKILL)

        cache._write_block = write_then_die
    cache.extract_activations(TinyImages(), backbone, LAYERS, store, batch_size=BATCH,
                              dtype="float32", gradients="top1", progress=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:4])
