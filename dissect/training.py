"""Training loop of the saliency readout models (He et al., CVPR 2019, §3, setups I and II).

Loss: the negative mean over the images of a batch of NSS (Peters et al. 2005; Eq. of NSS in
He et al. §4.1) of each predicted map, bilinearly upsampled (``align_corners=False``) to its
image's original size, at that image's fixations — computed exactly without materialising the
upsampled map by :func:`dissect.metrics.region.nss_at_points_torch`.

Fixations: by default each observer's first fixation is excluded (``drop_first=True``): in OSIE
it is the central starting point imposed by the protocol, not a choice of the observer.

Validation is a slice of the *training* split (:func:`split_train_val`); held-out images are
reserved for the analyses and must never be passed here. Early stopping watches validation NSS.

Frozen stages are served from the Zarr prefix cache of :mod:`dissect.models.readout` when
``cache_dir`` is given (the default for real runs); with ``cache_dir=None`` every batch decodes
its images and runs the frozen prefix again (the reference path, used by tests and the bench).
Runs are deterministic for a given ``seed`` and thread count on a given kind of machine: the
readout initialisation is seeded, the shuffling uses its own ``torch.Generator``, there is no
dropout or augmentation, and ``torch.use_deterministic_algorithms(True)`` holds for the duration
of the run (an op without a deterministic kernel raises instead of drifting).

Speed (``bench/train_precision.py``, k = all, one run): channels-last memory format is 1.6x
faster than the default layout on CPU with gradients equal to 1e-5 relative, and is used;
bfloat16 autocast moves the gradient by ~25 % relative, so it is not used.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dissect.errors import DataError
from dissect.metrics.conventions import pixel_indices_torch
from dissect.models.readout import (
    PrefixCache,
    SaliencyReadout,
    Setup,
    _load_inputs,
    bar_callback,
    build_prefix_cache,
    save_readout,
)

__all__ = ["TrainResult", "train_readout", "split_train_val", "nss_loss", "evaluate_nss"]

HISTORY_COLUMNS = ("epoch", "train_loss", "val_nss", "lr", "seconds")


@dataclass
class TrainResult:
    """Outcome of :func:`train_readout`. ``model`` holds the best-epoch weights."""

    model: SaliencyReadout
    history: pd.DataFrame
    best_epoch: int
    best_val_nss: float
    cache_seconds: float = 0.0
    cache_path: Path | None = None
    checkpoint_path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)


def split_train_val(
    train_ids: Sequence[str], fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split the *training* images into (train, validation); at least one validation image.

    Deterministic for ``seed``; the order within each part follows ``train_ids``."""
    ids = [str(i) for i in train_ids]
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")
    if len(ids) < 2:
        raise ValueError("need at least 2 training images to hold out a validation slice")
    n_val = max(1, round(fraction * len(ids)))
    rng = np.random.default_rng(seed)
    val = set(rng.choice(len(ids), size=n_val, replace=False).tolist())
    train = [i for k, i in enumerate(ids) if k not in val]
    return train, [i for k, i in enumerate(ids) if k in val]


def nss_loss(
    maps: torch.Tensor, sizes: Sequence[tuple[int, int]], points: Sequence[torch.Tensor]
) -> torch.Tensor:
    """−mean over images of NSS(map_i upsampled to sizes[i], points[i]) (differentiable)."""
    from dissect.metrics.region import nss_at_points_torch

    vals = [
        nss_at_points_torch(maps[i : i + 1], tuple(sizes[i]), points[i])[0].to(torch.float64)
        for i in range(maps.shape[0])
    ]
    return -torch.stack(vals).mean()


class _Targets:
    """Fixation points and image sizes of the training images (validated once)."""

    def __init__(self, dataset: Any, ids: Sequence[str], drop_first: bool):
        self.points: dict[str, torch.Tensor] = {}
        self.sizes: dict[str, tuple[int, int]] = {}
        for i in ids:
            pts = np.asarray(dataset.points(i, drop_first=drop_first), dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
                raise DataError(
                    getattr(dataset[i], "file", i),
                    f"image {i} has no fixations to train on"
                    + (" after dropping each observer's first fixation" if drop_first else ""),
                )
            # the pixel each fixation falls on (the package's one pixel rule)
            self.points[i] = pixel_indices_torch(torch.from_numpy(pts))
            st = dataset[i]
            self.sizes[i] = (int(st.height), int(st.width))

    def batch(self, ids: Sequence[str]) -> tuple[list[tuple[int, int]], list[torch.Tensor]]:
        return [self.sizes[i] for i in ids], [self.points[i] for i in ids]


class _Features:
    """Prefix-boundary tensors: from a :class:`PrefixCache` (kept in memory when it fits) or,
    with no cache, recomputed from the images every time (decode + preprocess + frozen prefix)."""

    def __init__(
        self,
        model: SaliencyReadout,
        dataset: Any,
        start: int,
        cache: PrefixCache | None,
        ids: Sequence[str],
        max_memory: int,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.model, self.dataset, self.start, self.cache = model, dataset, start, cache
        self.memory_format = memory_format
        self.mem: dict[str, torch.Tensor] = {}
        if cache is not None and ids:
            first = cache.read(ids[0])
            if first.nbytes * len(ids) <= max_memory:
                self.mem = {i: torch.from_numpy(cache.read(i)) for i in ids}

    def get(self, ids: Sequence[str]) -> torch.Tensor:
        dev = self.model.readout.weight.device
        if self.cache is None:
            x = _load_inputs(self.model, self.dataset, ids).to(dev)
            x = self.model.prefix(x, self.start)
        elif self.mem:
            x = torch.stack([self.mem[i] for i in ids]).to(dev)
        else:
            x = torch.from_numpy(np.stack([self.cache.read(i) for i in ids])).to(dev)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x


@torch.no_grad()
def evaluate_nss(
    model: SaliencyReadout,
    features: _Features,
    targets: _Targets,
    ids: Sequence[str],
    batch_size: int,
) -> float:
    """Mean NSS over ``ids`` (eval mode, no gradients)."""
    if not ids:
        return float("nan")
    was = model.training
    model.eval()
    total = 0.0
    for b in range(0, len(ids), batch_size):
        chunk = list(ids[b : b + batch_size])
        maps = model.forward_from(features.get(chunk), features.start)
        total += -float(nss_loss(maps, *targets.batch(chunk))) * len(chunk)
    model.train(was)
    return total / len(ids)


def _optimizer(
    model: SaliencyReadout, name: str, lr: float, trunk_lr: float | None, weight_decay: float
) -> torch.optim.Optimizer:
    groups = [{"params": list(model.readout.parameters()), "lr": lr}]
    trunk = [p for m in model.stages for p in m.parameters() if p.requires_grad]
    if trunk:
        groups.append({"params": trunk, "lr": lr if trunk_lr is None else trunk_lr})
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', not {name!r}")


def _scheduler(
    opt: torch.optim.Optimizer, kind: str | None, epochs: int, step_size: int, gamma: float
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if kind in (None, "none", "constant"):
        return None
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    raise ValueError(f"lr_schedule must be None, 'step' or 'cosine', not {kind!r}")


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


class _Deterministic:
    """Require deterministic algorithms for a block (when ``on``) and restore the previous
    setting afterwards."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self) -> None:
        if not self.on:
            return
        self.prev = torch.are_deterministic_algorithms_enabled()
        self.prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        if not self.on:
            return
        torch.use_deterministic_algorithms(self.prev, warn_only=self.prev_warn)


def deterministic() -> _Deterministic:
    """Context manager: ``torch.use_deterministic_algorithms(True)`` for a block (training of
    any model: readouts here, the scene model in the scene stage)."""
    return _Deterministic(True)


def train_readout(
    backbone: Any,
    dataset: Any,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    k: Setup = 0,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    optimizer: Literal["adam", "adamw", "sgd"] = "adam",
    weight_decay: float = 0.0,
    batch_size: int = 8,
    seed: int = 0,
    patience: int | None = 5,
    min_delta: float = 0.0,
    lr_schedule: Literal["step", "cosine"] | None = "cosine",
    step_size: int = 10,
    gamma: float = 0.1,
    trunk_lr: float | None = None,
    drop_first: bool = True,
    heldout_ids: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
    max_cache_memory: int = 2 << 30,
    device: str | torch.device = "cpu",
    deterministic: bool = True,
    channels_last: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_bar: bool = False,
    desc: str | None = None,
) -> TrainResult:
    """Train a :class:`SaliencyReadout` on ``backbone`` with setup ``k`` (0 = setup I; 1…n or
    ``"all"`` = setup II, the top-k stages fine-tuned) and return the best-validation model.

    Each call starts from the pretrained ``backbone`` (deep-copied; the argument is unchanged).
    ``val_ids`` must be a slice of the training split (see :func:`split_train_val`), disjoint
    from ``train_ids``; pass the split's held-out ids as ``heldout_ids`` to have any leak
    refused. Every epoch: shuffle (seeded generator), minimise :func:`nss_loss`, then
    evaluate validation NSS; ``lr_schedule`` ("cosine" over ``epochs``, "step" by ``gamma`` every
    ``step_size`` epochs, or None) steps once per epoch; with ``patience`` set, training stops
    after ``patience`` epochs without a validation improvement larger than ``min_delta``. The
    weights of the best epoch are restored (the last epoch when there is no validation set).

    ``cache_dir`` enables the frozen-prefix Zarr cache (train + validation images; build time
    in ``TrainResult.cache_seconds``). ``log_path`` receives the history CSV (``epoch,
    train_loss, val_nss, lr, seconds``) after every epoch; ``checkpoint_path`` the best tuned
    state + metadata (.pt, :func:`dissect.models.readout.save_readout`) whenever validation
    improves.

    Reproducibility: ``torch.manual_seed(seed)`` before the readout is initialised, a seeded
    ``torch.Generator`` for the shuffling, and (``deterministic``, default on)
    ``torch.use_deterministic_algorithms(True)`` for the run: two runs with the same seed and
    thread count give bitwise-identical weights and histories. ``channels_last`` (default on)
    runs the tuned stages in channels-last memory format (1.6x faster on CPU, see the module
    docstring); the saved weights are the same tensors either way.

    ``progress`` is called with each epoch's history row; ``progress_bar`` shows a tqdm bar on
    stderr (epochs done / ``epochs``, ETA, the last train loss and validation NSS; the frozen
    prefix cache's images first) named ``desc`` (default ``"train k<k> seed <seed>"``). Neither
    changes what is computed.
    """
    train_ids = [str(i) for i in train_ids]
    val_ids = [str(i) for i in val_ids]
    if not train_ids:
        raise ValueError("train_ids is empty")
    for name, ids in (("train_ids", train_ids), ("val_ids", val_ids)):
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name} contains duplicates")
    overlap = set(train_ids) & set(val_ids)
    if overlap:
        raise ValueError(f"val_ids overlap train_ids ({len(overlap)} images, e.g. {min(overlap)})")
    leak = (set(train_ids) | set(val_ids)) & {str(i) for i in (heldout_ids or ())}
    if leak:
        raise ValueError(
            f"{len(leak)} held-out image(s) passed for training/validation, e.g. {min(leak)}; "
            "held-out images are reserved for the analyses"
        )
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    if patience is not None and patience < 1:
        raise ValueError("patience must be >= 1 or None")
    device = torch.device(device)
    config = {
        "k": k, "epochs": epochs, "lr": lr, "optimizer": optimizer,
        "weight_decay": weight_decay, "batch_size": batch_size, "seed": seed,
        "patience": patience, "min_delta": min_delta, "lr_schedule": lr_schedule,
        "step_size": step_size, "gamma": gamma, "trunk_lr": trunk_lr, "drop_first": drop_first,
        "n_train": len(train_ids), "n_val": len(val_ids),
    }

    with _Deterministic(deterministic):
        torch.manual_seed(seed)
        model = SaliencyReadout(backbone, k).to(device)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)
        start = model.first_tuned()
        targets = _Targets(dataset, train_ids + val_ids, drop_first)

        desc = desc or f"train k{k} seed {seed}"
        cache = None
        cache_seconds = 0.0
        if cache_dir is not None:
            t0 = time.perf_counter()
            with tqdm(desc=f"{desc}: prefix cache", unit="image", leave=False,
                      disable=not progress_bar) as cache_bar:
                cache, _ = build_prefix_cache(
                    model, dataset, train_ids + val_ids, cache_dir, start=start,
                    batch_size=max(batch_size, 8), progress=bar_callback(cache_bar),
                )
            cache_seconds = time.perf_counter() - t0
        feats = _Features(model, dataset, start, cache, train_ids + val_ids, max_cache_memory,
                          layout)

        opt = _optimizer(model, optimizer, lr, trunk_lr, weight_decay)
        sched = _scheduler(opt, lr_schedule, epochs, step_size, gamma)
        gen = torch.Generator().manual_seed(seed)
        log_path = Path(log_path) if log_path is not None else None
        checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None

        rows: list[dict[str, Any]] = []
        best = (-math.inf, 0)
        best_state = model.tuned_state_dict()
        since_best = 0
        bar = tqdm(total=epochs, desc=desc, unit="epoch", disable=not progress_bar)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            cur_lr = opt.param_groups[0]["lr"]
            model.train()
            total = 0.0
            order = torch.randperm(len(train_ids), generator=gen).tolist()
            for b in range(0, len(order), batch_size):
                chunk = [train_ids[j] for j in order[b : b + batch_size]]
                maps = model.forward_from(feats.get(chunk), start)
                loss = nss_loss(maps, *targets.batch(chunk))
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"epoch {epoch}: non-finite loss (a constant predicted map has no NSS) "
                        f"on images {chunk[:3]}; lower the learning rate"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(chunk)
            train_loss = total / len(train_ids)
            val_nss = evaluate_nss(model, feats, targets, val_ids, batch_size)
            if sched is not None:
                sched.step()
            rows.append({"epoch": epoch, "train_loss": train_loss, "val_nss": val_nss,
                         "lr": cur_lr, "seconds": time.perf_counter() - t0})
            history = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
            if log_path is not None:
                _write_csv_atomic(history, log_path)
            if progress is not None:
                progress(rows[-1])
            postfix = f"train loss {train_loss:.4f}, val NSS {val_nss:.4f}"
            bar.set_postfix_str(postfix, refresh=False)
            bar.update()

            improved = (not val_ids) or val_nss > best[0] + min_delta
            if improved:
                best = (val_nss if val_ids else math.nan, epoch)
                best_state = model.tuned_state_dict()
                since_best = 0
                if checkpoint_path is not None:
                    save_readout(checkpoint_path, model, {
                        **config, "best_epoch": epoch, "val_nss": val_nss,
                        "train_loss": train_loss,
                        "train_ids": train_ids, "val_ids": val_ids,
                    })
            else:
                since_best += 1
            if patience is not None and val_ids and since_best >= patience:
                break
        if len(rows) < epochs:  # early stop: said on the bar, which ends short of its total
            bar.set_postfix_str(f"{postfix}, early stop (best epoch {best[1]})", refresh=False)
        bar.close()

        model.load_tuned_state_dict(best_state)
        # back to the default layout: the returned model computes exactly what a model loaded
        # from its checkpoint computes
        model = model.to(memory_format=torch.contiguous_format)
        model.eval()
    return TrainResult(
        model=model,
        history=pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)),
        best_epoch=best[1],
        best_val_nss=float(best[0]),
        cache_seconds=cache_seconds,
        cache_path=cache.path if cache is not None else None,
        checkpoint_path=checkpoint_path,
        config=config,
    )
