"""Scene-recognition fine-tuning of a trunk (He et al. 2019, §8 "task vs data").

To ask whether saliency fine-tuning changes the inner representation because of the *task* or
because of the *data*, the study fine-tunes the same pretrained trunk on the same images for a
different task, scene recognition, and compares both fine-tuned trunks (sp: saliency, sr: scene)
with the pretrained one (pt). As in the study, only the last convolutional stage of the trunk is
fine-tuned by default (conv5_3 for VGG-16; the ``head`` stage for EfficientNet-Lite0;
``tune_stages`` picks others: the pipeline's ``scene.tuned_stages``, which also selects the
saliency readout ``k<tuned_stages>`` used as sp), together with three fully connected layers:

    features = GAP(trunk(x))                    global average pooling of the last trunk layer
    h1 = Dropout(ReLU(W1 features + b1))        C → hidden[0]     (default 512)
    h2 = Dropout(ReLU(W2 h1 + b2))              hidden[0] → hidden[1]  (default 256)
    logits = W3 h2 + b3                         hidden[1] → n_classes

with C the channels of the last trunk layer (512 for VGG-16, 1280 for EfficientNet-Lite0) and
dropout p = 0.5 by default (the pipeline's ``scene.hidden`` and ``scene.dropout``). The loss
is class-weighted cross-entropy, ``w_c = N / (K · n_c)`` (N training images, K classes, n_c
training images of class c: inversely proportional to class frequency, mean weight over images
= 1), which compensates imbalanced scene categories.

Since the frozen prefix (all stages before the tuned ones) never changes, its outputs are
computed once per image and cached in Zarr (``cache_dir``) with the saliency side's
:class:`dissect.models.readout.PrefixCache` (so a saliency run tuning the same stages shares the
store); training runs only the tuned stages and the head on the cache. Consequently no image
augmentation is used (a cached feature map is one fixed view of the image). BatchNorm layers
inside the tuned stages keep their pretrained running statistics (``freeze_bn=True``, the same
policy as :mod:`dissect.models.readout`; their affine parameters are still trained): small
batches would otherwise drift the statistics the unit maps depend on.

The fine-tuned trunk comes back as a Backbone-like object with the same stages, unit layers and
module paths (:meth:`SceneClassifier.trunk_backbone`), so the unit analyses run on it exactly as
on the pretrained trunk.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from dissect.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_HIDDEN = (512, 256)
DEFAULT_DROPOUT = 0.5

__all__ = [
    "SceneClassifier",
    "SceneTrainResult",
    "class_weights",
    "train_scene_model",
    "evaluate_scene_model",
    "save_scene_model",
    "load_scene_model",
    "prefix_features",
]


# --------------------------------------------------------------------------------------------
# model


def resolve_tune_stages(stage_names: Sequence[str], tune_stages: int | Sequence[str]) -> list[str]:
    """Names of the stages to fine-tune: the last ``k`` (int), ``"all"`` (every stage, as the
    saliency readout's ``k = "all"``), or the given names.

    The tuned stages must be the trunk's last stages (a contiguous suffix), so that everything
    before them is a frozen prefix whose outputs can be cached.
    """
    names = list(stage_names)
    if isinstance(tune_stages, str) and tune_stages == "all" and "all" not in names:
        return names
    if isinstance(tune_stages, int | np.integer):
        k = int(tune_stages)
        if not 0 <= k <= len(names):
            raise ValueError(f"tune_stages={k} outside 0..{len(names)} (stages: {names})")
        return names[len(names) - k :]
    wanted = [str(s) for s in ([tune_stages] if isinstance(tune_stages, str) else tune_stages)]
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the trunk's stages are {names}")
    suffix = names[len(names) - len(wanted) :] if wanted else []
    if sorted(wanted, key=names.index) != suffix or len(set(wanted)) != len(wanted):
        raise ValueError(
            f"tune_stages {wanted} must be the trunk's last stages (e.g. {names[-len(wanted) :]}): "
            "only a frozen prefix can be cached"
        )
    return suffix


class SceneClassifier(nn.Module):
    """Trunk + GAP + three fully connected layers predicting the scene category (module doc).

    The classifier owns a deep copy of ``backbone``: fine-tuning never touches the caller's
    pretrained trunk. ``prefix`` (frozen, always in eval mode) and ``tuned`` are
    :class:`~torch.nn.Sequential` views of the copy's stage modules, so training ``tuned``
    updates the copy's model in place and :meth:`trunk_backbone` hands it out.

    Args:
        backbone: a ``Backbone`` (``.stages``, ``.model``, ``.layers``, ``.weights_id``...).
        classes: scene category names, in class-index order.
        tune_stages: number of last stages to fine-tune (default 1: conv5_3 / head), ``"all"``,
            or their names (the pipeline's ``scene.tuned_stages``).
        hidden: sizes of the two hidden fully connected layers (``scene.hidden``).
        dropout: dropout probability after each hidden layer (``scene.dropout``).
        freeze_bn: keep BatchNorm running statistics of the tuned stages fixed.
        in_channels: channels of the last trunk layer; found by a dummy forward when None.
        seed: seed of the head's initialisation.
    """

    def __init__(
        self,
        backbone: Any,
        classes: Sequence[str],
        *,
        tune_stages: int | Sequence[str] = 1,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        freeze_bn: bool = True,
        in_channels: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if len(classes) < 2:
            raise ValueError(f"need at least 2 scene classes, got {list(classes)}")
        if len(hidden) != 2:
            raise ValueError(f"hidden must give the 2 hidden layer sizes, got {hidden}")
        self._backbone = copy.deepcopy(backbone)
        self.classes = [str(c) for c in classes]
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout_p = float(dropout)
        self.freeze_bn = bool(freeze_bn)
        self.seed = int(seed)
        stages = list(self._backbone.stages)
        names = [n for n, _ in stages]
        self.tune_stage_names = resolve_tune_stages(names, tune_stages)
        n_prefix = len(stages) - len(self.tune_stage_names)
        self.prefix_stage_names = names[:n_prefix]
        self.prefix = nn.Sequential(*[m for _, m in stages[:n_prefix]])
        self.tuned = nn.Sequential(*[m for _, m in stages[n_prefix:]])
        for p in self._backbone.model.parameters():
            p.requires_grad_(False)
        for p in self.tuned.parameters():
            p.requires_grad_(True)
        if in_channels is None:
            in_channels = self._probe_channels()
        self.in_channels = int(in_channels)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            h1, h2 = self.hidden
            self.head = nn.Sequential(
                nn.Linear(self.in_channels, h1),
                nn.ReLU(inplace=True),
                nn.Dropout(self.dropout_p),
                nn.Linear(h1, h2),
                nn.ReLU(inplace=True),
                nn.Dropout(self.dropout_p),
                nn.Linear(h2, len(self.classes)),
            )
        finally:
            torch.random.set_rng_state(gen_state)
        self.train(False)

    def _probe_channels(self) -> int:
        p = next(self._backbone.model.parameters())
        was = self.prefix.training, self.tuned.training
        self.prefix.eval()
        self.tuned.eval()
        with torch.no_grad():
            out = self.tuned(self.prefix(torch.zeros(1, 3, 64, 64, dtype=p.dtype, device=p.device)))
        self.prefix.train(was[0])
        self.tuned.train(was[1])
        if out.ndim != 4:
            raise ValueError(f"the trunk's last stage gives a {tuple(out.shape)} output, not NCHW")
        return int(out.shape[1])

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SceneClassifier:
        super().train(mode)
        self.prefix.eval()  # frozen: its outputs are cached
        if self.freeze_bn:
            for m in self.tuned.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- forward -----------------------------------------------------------------------------
    def forward_features(self, prefix_out: torch.Tensor) -> torch.Tensor:
        """Logits from the frozen prefix's output (what training on the cache uses)."""
        x = self.tuned(prefix_out)
        return self.head(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` from normalised images ``(B, 3, H, W)``."""
        with torch.no_grad():
            f = self.prefix(x)
        return self.forward_features(f)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- the fine-tuned trunk ---------------------------------------------------------------
    def tuned_digest(self) -> str:
        """sha256 (12 hex) of the tuned stages' weights and buffers
        (:func:`dissect.backbones.state_dict_sha256`, the package's one state-dict hash)."""
        from dissect.backbones import state_dict_sha256

        return state_dict_sha256(self.tuned, 12)

    def trunk_backbone(self) -> Any:
        """The fine-tuned trunk as a Backbone: a deep copy with the same ``stages``/``layers``
        and module paths whose tuned stage modules carry the fine-tuned weights (CPU, eval
        mode). Its ``weights_id`` is the pretrained one + ``+scene:<digest of tuned weights>``.
        """
        bb = copy.deepcopy(self._backbone)
        bb.model.cpu().eval()
        for p in bb.model.parameters():
            p.requires_grad_(False)
        new_id = f"{self._backbone.weights_id}+scene:{self.tuned_digest()}"
        if dataclasses.is_dataclass(bb) and not isinstance(bb, type):
            try:
                return dataclasses.replace(bb, weights_id=new_id)
            except (TypeError, ValueError):  # fields not settable by __init__
                pass
        try:
            bb.weights_id = new_id
        except AttributeError:
            object.__setattr__(bb, "weights_id", new_id)
        return bb

    @property
    def backbone(self) -> Any:
        """The classifier's own (live) backbone copy; use :meth:`trunk_backbone` to hand out."""
        return self._backbone

    def config(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "tune_stages": self.tune_stage_names,
            "hidden": list(self.hidden),
            "dropout": self.dropout_p,
            "freeze_bn": self.freeze_bn,
            "in_channels": self.in_channels,
            "seed": self.seed,
            "backbone_weights_id": str(self._backbone.weights_id),
        }


def save_scene_model(model: SceneClassifier, path: str | Path) -> Path:
    """Save the trainable state (tuned stages + head) and the configuration."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "config": model.config(),
        "tuned": model.tuned.state_dict(),
        "head": model.head.state_dict(),
    }
    torch.save(state, path)
    return path


def load_scene_model(path: str | Path, backbone: Any) -> SceneClassifier:
    """Rebuild a :class:`SceneClassifier` on ``backbone`` (the pretrained trunk it was trained
    from: its ``weights_id`` must match) and load the saved weights."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "scene model checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = state["config"]
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is a data error
        raise DataError(path, f"not a scene model checkpoint ({e})") from None
    if str(backbone.weights_id) != cfg["backbone_weights_id"]:
        raise DataError(
            path,
            f"trained on backbone weights {cfg['backbone_weights_id']!r}, "
            f"given {backbone.weights_id!r}",
        )
    model = SceneClassifier(
        backbone,
        cfg["classes"],
        tune_stages=cfg["tune_stages"],
        hidden=cfg["hidden"],
        dropout=cfg["dropout"],
        freeze_bn=cfg["freeze_bn"],
        in_channels=cfg["in_channels"],
        seed=cfg["seed"],
    )
    model.tuned.load_state_dict(state["tuned"])
    model.head.load_state_dict(state["head"])
    return model


# --------------------------------------------------------------------------------------------
# frozen-prefix cache


def _as_batch(x: Any) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.unsqueeze(0) if t.ndim == 3 else t


def prefix_features(
    model: SceneClassifier,
    dataset: Any,
    ids: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Outputs of the frozen prefix for ``ids`` as one float32 tensor ``(N, C, h, w)`` (CPU).

    With ``cache_dir`` the saliency side's Zarr store is used
    (:class:`dissect.models.readout.PrefixCache`, via
    :func:`dissect.models.readout.build_prefix_cache` on a
    :class:`~dissect.models.readout.SaliencyReadout` with the same backbone and number of tuned
    stages):
    it is keyed by backbone, weights id, boundary stage and preprocessing, checked on opening,
    resumable, and shared with a saliency run that tunes the same stages. Without ``cache_dir``
    the prefix runs in memory. ``dataset[id]`` must give a stimulus with ``.file`` (the cache
    fingerprints image files). ``progress``: a tqdm bar (images) on stderr.
    """
    ids = [str(i) for i in ids]
    if not ids:
        return torch.zeros(0)
    t0 = time.perf_counter()
    from dissect.models.readout import bar_callback

    bar = tqdm(desc="scene: frozen prefix", unit="image", leave=False, disable=not progress)
    moved = bar_callback(bar)
    if cache_dir is not None:
        from dissect.models.readout import SaliencyReadout, build_prefix_cache

        proxy = SaliencyReadout(
            model.backbone, len(model.tune_stage_names), channels=model.in_channels
        ).to(device)
        cache, n_new = build_prefix_cache(proxy, dataset, ids, cache_dir, batch_size=batch_size,
                                          progress=moved)
        out = torch.from_numpy(np.stack([cache.read(i) for i in ids]))
        del proxy
    else:
        n_new = len(ids)
        model.prefix.to(device).eval()
        chunks = []
        for start in range(0, len(ids), batch_size):
            x = torch.cat(
                [
                    _as_batch(model.backbone.preprocess(dataset.load_image(i)))
                    for i in ids[start : start + batch_size]
                ]
            )
            with torch.no_grad():
                chunks.append(model.prefix(x.to(device, torch.float32)).float().cpu())
            moved(min(start + batch_size, len(ids)), len(ids))
        out = torch.cat(chunks)
    bar.close()
    if n_new:
        log.info(
            "frozen prefix (%d stages) computed for %d images in %.1f s",
            len(model.prefix_stage_names),
            n_new,
            time.perf_counter() - t0,
        )
    return out


# --------------------------------------------------------------------------------------------
# training


def class_weights(
    y: np.ndarray, n_classes: int, classes: Sequence[str] | None = None
) -> np.ndarray:
    """Cross-entropy class weights ``w_c = N / (K · n_c)`` (inverse class frequency).

    A class with no training image has no defined weight: :class:`DataError`.
    """
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes)[:n_classes]
    if len(y) == 0 or (counts == 0).any():
        names = classes or [str(c) for c in range(n_classes)]
        empty = [names[c] for c in np.flatnonzero(counts == 0)]
        raise DataError("training split", f"scene class(es) without training images: {empty}")
    return len(y) / (n_classes * counts.astype(np.float64))


@dataclass
class SceneTrainResult:
    """Trained classifier (best validation epoch restored), per-epoch history, class names."""

    model: SceneClassifier
    history: pd.DataFrame
    classes: list[str]
    best_epoch: int = -1
    class_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _evaluate_logits(
    model: SceneClassifier, feats: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(feats), batch_size):
            outs.append(model.forward_features(feats[start : start + batch_size].to(device)).cpu())
    return torch.cat(outs) if outs else torch.zeros(0, len(model.classes))


def _scores(logits: torch.Tensor, y: torch.Tensor, criterion: nn.Module, k: int) -> dict:
    if len(y) == 0:
        return {"loss": np.nan, "accuracy": np.nan, "balanced_accuracy": np.nan}
    pred = logits.argmax(1)
    correct = (pred == y).numpy()
    yn = y.numpy()
    recalls = [correct[yn == c].mean() for c in range(k) if (yn == c).any()]
    return {
        "loss": float(criterion(logits, y)),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(np.mean(recalls)),
    }


def train_scene_model(
    backbone: Any,
    dataset: Any,
    labels: Any,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    *,
    epochs: int = 30,
    lr: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    patience: int = 5,
    cache_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    tune_stages: int | Sequence[str] = 1,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    dropout: float = DEFAULT_DROPOUT,
    weight_decay: float = 1e-4,
    freeze_bn: bool = True,
    monitor: str = "accuracy",
    device: str | torch.device | None = None,
    progress: bool = False,
) -> SceneTrainResult:
    """Fine-tune the last stage(s) of ``backbone`` + the FC head for scene recognition.

    Adam (``lr``, ``weight_decay``) on class-weighted cross-entropy (weights from the training
    split, :func:`class_weights`), mini-batches of cached prefix outputs shuffled by a generator
    seeded with ``seed`` (dropout and head initialisation are seeded too: the same seed gives the
    same history on CPU). After each epoch the validation split is scored; the epoch with the
    best ``monitor`` ("accuracy", "balanced_accuracy" — ties broken by lower validation loss —
    or "loss") is kept, and training stops after ``patience`` epochs without improvement. With no
    validation images every epoch runs and the last one is kept.

    ``labels`` is a :class:`~dissect.data.scenes.SceneLabels`; every id must have a kept label
    (use ``labels.restrict(ids)`` first). The history (one row per epoch: epoch, train_loss,
    train_accuracy, val_loss, val_accuracy, val_balanced_accuracy, seconds) is written as CSV
    to ``log_path`` after every epoch. ``progress``: tqdm bars on stderr (the frozen prefix's
    images, then epochs done / ``epochs`` with ETA and the last losses); nothing computed
    changes.
    """
    if monitor not in ("accuracy", "balanced_accuracy", "loss"):
        raise ValueError(f"monitor must be accuracy, balanced_accuracy or loss, got {monitor!r}")
    train_ids = [str(i) for i in train_ids]
    val_ids = [str(i) for i in val_ids]
    overlap = sorted(set(train_ids) & set(val_ids))
    if overlap:
        raise DataError("split", f"{len(overlap)} image(s) in both train and val: {overlap[:8]}")
    if not train_ids:
        raise DataError("split", "no training images")
    classes = list(labels.classes)
    k = len(classes)
    y_train = torch.from_numpy(labels.indices(train_ids))
    y_val = (
        torch.from_numpy(labels.indices(val_ids)) if val_ids else torch.zeros(0, dtype=torch.long)
    )
    weights = class_weights(y_train.numpy(), k, classes)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model = SceneClassifier(
        backbone,
        classes,
        tune_stages=tune_stages,
        hidden=hidden,
        dropout=dropout,
        freeze_bn=freeze_bn,
        seed=seed,
    )
    t0 = time.perf_counter()
    feats = prefix_features(model, dataset, train_ids + val_ids, cache_dir=cache_dir, device=dev,
                            progress=progress)
    f_train, f_val = feats[: len(train_ids)], feats[len(train_ids) :]
    log.info("prefix features ready in %.1f s: %d training images of %s", time.perf_counter() - t0,
             len(f_train), "x".join(str(d) for d in f_train.shape[1:]))

    model.to(dev)
    criterion = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    criterion_dev = nn.CrossEntropyLoss(weight=criterion.weight.to(dev))
    optim = torch.optim.Adam(model.trainable_parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)

    def better(cur: dict, best: dict | None) -> bool:
        if best is None:
            return True
        if monitor == "loss":
            return cur["loss"] < best["loss"]
        if cur[monitor] != best[monitor]:
            return cur[monitor] > best[monitor]
        return cur["loss"] < best["loss"]

    rows = []
    best: dict | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = -1
    stale = 0
    bar = tqdm(total=epochs, desc="train scene model", unit="epoch", disable=not progress)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            te = time.perf_counter()
            model.train()
            order = torch.randperm(len(f_train), generator=gen)
            total, n_correct = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                xb, yb = f_train[idx].to(dev), y_train[idx].to(dev)
                optim.zero_grad(set_to_none=True)
                logits = model.forward_features(xb)
                loss = criterion_dev(logits, yb)
                loss.backward()
                optim.step()
                total += float(loss.detach()) * len(idx)
                n_correct += int((logits.argmax(1) == yb).sum())
            val = _scores(_evaluate_logits(model, f_val, batch_size, dev), y_val, criterion, k)
            row = {
                "epoch": epoch,
                "train_loss": total / len(order),
                "train_accuracy": n_correct / len(order),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_balanced_accuracy": val["balanced_accuracy"],
                "seconds": time.perf_counter() - te,
            }
            rows.append(row)
            log.info("scene epoch %d: train loss %.4f, accuracy %.3f; validation loss %.4f, "
                     "accuracy %.3f, balanced accuracy %.3f (%.1f s)", row["epoch"],
                     row["train_loss"], row["train_accuracy"], row["val_loss"],
                     row["val_accuracy"], row["val_balanced_accuracy"], row["seconds"])
            bar.set_postfix_str(f"train loss {row['train_loss']:.4f}, val loss "
                                f"{row['val_loss']:.4f}, val accuracy {row['val_accuracy']:.3f}",
                                refresh=False)
            bar.update()
            if log_path is not None:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(log_path, index=False)
            if not val_ids:
                best_epoch = epoch
                continue
            if better(val, best):
                best, best_epoch, stale = val, epoch, 0
                best_state = {
                    "tuned": copy.deepcopy(model.tuned.state_dict()),
                    "head": copy.deepcopy(model.head.state_dict()),
                }
            else:
                stale += 1
                if stale >= patience:
                    log.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                    break
    bar.close()
    if best_state is not None:
        model.tuned.load_state_dict(best_state["tuned"])
        model.head.load_state_dict(best_state["head"])
    model.cpu().eval()
    history = pd.DataFrame(rows)
    history["best"] = history["epoch"] == best_epoch
    if log_path is not None:
        history.to_csv(log_path, index=False)
    return SceneTrainResult(
        model=model, history=history, classes=classes, best_epoch=best_epoch, class_weights=weights
    )


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_scene_model(
    model: SceneClassifier,
    dataset: Any,
    labels: Any,
    ids: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[float, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Scene accuracy of ``model`` on ``ids`` (use held-out images).

    Returns:
        accuracy: fraction of images whose scene is predicted correctly.
        recall: DataFrame ``scene, n, n_correct, recall`` (one row per class; recall NaN for a
            class without images among ``ids``).
        confusion: counts, index = true scene, columns = predicted scene (all classes).
        predictions: DataFrame ``image, true, pred, correct`` (one row per id, in order).
    """
    ids = [str(i) for i in ids]
    if not ids:
        raise DataError("evaluation", "no images to evaluate")
    classes = list(model.classes)
    if list(labels.classes) != classes:
        raise DataError(
            getattr(labels, "source", "labels"),
            f"label classes {list(labels.classes)} differ from the model's {classes}",
        )
    y = labels.indices(ids)
    feats = prefix_features(model, dataset, ids, cache_dir=cache_dir, device=device,
                            progress=progress)
    model.to(device)
    logits = _evaluate_logits(model, feats, batch_size, torch.device(device))
    model.cpu()
    pred = logits.argmax(1).numpy()
    correct = pred == y
    predictions = pd.DataFrame(
        {
            "image": ids,
            "true": [classes[i] for i in y],
            "pred": [classes[i] for i in pred],
            "correct": correct,
        }
    )
    cm = pd.crosstab(
        pd.Categorical(predictions["true"], categories=classes),
        pd.Categorical(predictions["pred"], categories=classes),
        dropna=False,
    )
    cm.index.name, cm.columns.name = "true", "pred"
    cm = cm.reindex(index=classes, columns=classes, fill_value=0)
    n = cm.sum(axis=1).to_numpy()
    hits = np.diag(cm.to_numpy())
    recall = pd.DataFrame(
        {
            "scene": classes,
            "n": n,
            "n_correct": hits,
            "recall": np.where(n > 0, hits / np.maximum(n, 1), np.nan),
        }
    )
    return float(correct.mean()), recall, cm, predictions
