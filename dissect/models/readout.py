"""Saliency readout models (He et al., CVPR 2019, §3) and their frozen-prefix feature cache.

The saliency model of the paper is a pretrained recognition trunk followed by a 1×1 convolution
to one channel; its map, bilinearly upsampled to the image size, is trained with the negative
NSS of the human fixations (Eq. 2 of the paper's NSS, used as the loss).

- **Setup I** (``k = 0``): the trunk is frozen, only the 1×1 readout learns.
- **Setup II** (``k = 1 … n`` or ``"all"``): the top ``k`` trunk stages are fine-tuned together
  with the readout; every run starts from the same pretrained weights. A "stage" is one entry of
  :attr:`dissect.backbones.Backbone.stages`: one conv layer for VGG-16 (so ``k`` counts conv
  layers conv5_3, conv5_2, …), ``"head"``, ``"block15"``, … for EfficientNet-Lite0.

**BatchNorm / dropout policy.** The trunk always runs in eval mode, also while training: BN uses
its pretrained running statistics (saliency batches are small, so batch statistics would be
noisy and would differ between the cached and the uncached path) and drop-connect / dropout are
off. Gradients still flow into the weights of the tuned stages, including the BN affine
parameters (γ, β). Only the 1×1 readout is a "train-mode" module, and it has no mode-dependent
behaviour. Consequently the frozen prefix is a fixed function of the image, which is what makes
the cache below exact.

**Frozen-prefix cache.** The stages below the first tuned stage never change, so their output
(the tensor at the *prefix boundary*) is computed once per image and stored in Zarr
(:class:`PrefixCache`); training then runs only the tuned stages and the readout. A store is
keyed by the backbone's ``weights_id``, the boundary stage, the preprocessing and the package
versions (the store name carries a hash of that key, and the key is checked again on opening:
a mismatch raises :class:`~dissect.errors.StaleCacheError`); each image's tensor is keyed by the
image id plus a SHA-1 of the image file (a changed file is recomputed). An image's entry is
marked complete only after its data are written, so an interrupted build simply resumes.

The training loop lives in :mod:`dissect.training`, which imports this module (never the
other way round).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dissect.errors import DataError, StaleCacheError

__all__ = [
    "Setup",
    "SaliencyReadout",
    "PrefixCache",
    "cache_key",
    "bar_callback",
    "build_prefix_cache",
    "image_fingerprint",
    "save_readout",
    "load_readout",
]

Setup = int | Literal["all"]
CACHE_FORMAT = "dissect.prefix-cache/1"
CHECKPOINT_FORMAT = "dissect.readout/1"


# ---------------------------------------------------------------------- model
class SaliencyReadout(nn.Module):
    """Trunk stages + 1×1 conv readout to one channel (He et al. 2019, §3).

    ``backbone`` is deep-copied (the caller's backbone is never modified by fine-tuning); the
    copy is kept as :attr:`backbone`, so hooks by module path (``backbone.layers``) work on the
    fine-tuned model through ``readout.backbone.model``. The stages are registered as
    :attr:`stages` (an ``nn.ModuleList`` in trunk order); the readout is :attr:`readout`.

    ``forward(x)`` maps a normalised batch ``(B, 3, h_in, w_in)`` to ``(B, h, w)`` maps at the
    resolution of the last trunk stage; upsampling to the image size happens in the loss and in
    :meth:`predict`.
    """

    def __init__(self, backbone: Any, k: Setup = 0, *, channels: int | None = None):
        super().__init__()
        bb = copy.deepcopy(backbone)
        stages = list(bb.stages)
        if not stages:
            raise ValueError("backbone has no stages")
        self.backbone = bb  # plain attribute (not a Module): module paths of the copy
        self.stage_names: list[str] = [str(n) for n, _ in stages]
        self.stages = nn.ModuleList([m for _, m in stages])
        self.weights_id: str = str(getattr(bb, "weights_id", "unknown"))
        if channels is None:
            channels = self._infer_channels()
        self.channels = int(channels)
        self.readout = nn.Conv2d(self.channels, 1, kernel_size=1)
        self.k: Setup = 0
        self.setup(k)

    # ------------------------------------------------------------ structure
    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def _input_size(self) -> tuple[int, int]:
        size = getattr(getattr(self.backbone, "preprocess", None), "size", None)
        return tuple(int(s) for s in size) if size is not None else (224, 224)  # type: ignore

    @torch.no_grad()
    def _infer_channels(self) -> int:
        """Channels of the last stage's output, from one forward pass at 64×64."""
        was = [m.training for m in self.stages]
        p = next(self.stages.parameters(), None)
        x = torch.zeros(1, 3, 64, 64, device=p.device if p is not None else "cpu")
        for m in self.stages:
            m.eval()
            x = m(x)
        for m, t in zip(self.stages, was, strict=True):
            m.train(t)
        if x.dim() != 4:
            raise ValueError(f"last stage output has shape {tuple(x.shape)}, expected (B, C, h, w)")
        return int(x.shape[1])

    def first_tuned(self, k: Setup | None = None) -> int:
        """Index of the first trainable stage for setup ``k`` (``n_stages`` for setup I)."""
        k = self.k if k is None else k
        n = self.n_stages
        if k == "all":
            return 0
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= int(k) <= n:
            raise ValueError(f"k must be an int in 0..{n} or 'all', not {k!r}")
        return n - int(k)

    def boundary_name(self, start: int | None = None) -> str:
        """Name of the prefix boundary: the stage whose output the cache stores ('input' = the
        preprocessed image)."""
        start = self.first_tuned() if start is None else start
        return "input" if start == 0 else self.stage_names[start - 1]

    def setup(self, k: Setup) -> SaliencyReadout:
        """Make the top ``k`` stages trainable (0 = setup I, ``"all"`` = every stage).

        Frozen stages get ``requires_grad=False``; the readout is always trainable. The trunk
        stays in eval mode (see the module docstring)."""
        start = self.first_tuned(k)
        self.k = "all" if k == "all" else int(k)
        for i, m in enumerate(self.stages):
            for p in m.parameters():
                p.requires_grad_(i >= start)
        for p in self.readout.parameters():
            p.requires_grad_(True)
        self.train(self.training)
        return self

    @property
    def tuned_stage_names(self) -> list[str]:
        return self.stage_names[self.first_tuned():]

    def train(self, mode: bool = True) -> SaliencyReadout:
        """Set the readout's mode; the trunk stays in eval mode (frozen BN statistics)."""
        super().train(mode)
        self.stages.eval()
        return self

    # ------------------------------------------------------------ forward
    def prefix(self, x: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """Output of the frozen stages ``[0, start)`` (no graph is recorded)."""
        start = self.first_tuned() if start is None else start
        with torch.no_grad():
            for m in self.stages[:start]:
                x = m(x)
        return x

    def forward_from(self, feat: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """Run stages ``[start, n)`` and the readout on a prefix-boundary tensor → ``(B, h, w)``."""
        start = self.first_tuned() if start is None else start
        x = feat
        for m in self.stages[start:]:
            x = m(x)
        return self.readout(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H_in, W_in)`` → maps ``(B, h, w)`` at feature resolution."""
        start = self.first_tuned()
        return self.forward_from(self.prefix(x, start), start)

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Saliency map of one ``uint8 (H, W, 3)`` image at its own size ``(H, W)``, float32.

        The feature-resolution map is upsampled with ``F.interpolate(mode="bilinear",
        align_corners=False)`` (the package convention)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise DataError(None, f"predict expects an (H, W, 3) image, got shape {image.shape}")
        was = self.training
        self.eval()
        try:
            x = self.backbone.preprocess(image)
            if x.dim() == 3:
                x = x[None]
            dev = self.readout.weight.device
            m = self(x.to(dev, torch.float32))
            up = F.interpolate(m[:, None], size=image.shape[:2], mode="bilinear",
                               align_corners=False)
        finally:
            self.train(was)
        return up[0, 0].cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------ state
    def tuned_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the trainable part only (readout + tuned stages), detached copies."""
        start = self.first_tuned()
        keep = ("readout.",) + tuple(f"stages.{i}." for i in range(start, self.n_stages))
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(keep)}

    def load_tuned_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`tuned_state_dict`; every key must belong to readout / tuned stages."""
        expected = set(self.tuned_state_dict())
        got = set(state)
        if got != expected:
            raise ValueError(
                f"tuned state mismatch: missing {sorted(expected - got)[:5]}, "
                f"unexpected {sorted(got - expected)[:5]}"
            )
        self.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------- cache keys
def describe_preprocess(pre: Any) -> str:
    """A stable text description of a preprocessing callable (for cache keys).

    Uses ``pre.to_dict()`` / ``pre.describe()`` / ``pre.id`` when present, the fields of a
    dataclass, else the public attributes; never a memory address."""
    for attr in ("to_dict", "describe", "id", "key"):
        v = getattr(pre, attr, None)
        if callable(v):
            v = v()
        if isinstance(v, str | dict):
            return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    if dataclasses.is_dataclass(pre) and not isinstance(pre, type):
        fields = {f.name: getattr(pre, f.name) for f in dataclasses.fields(pre)}
    else:
        fields = {k: v for k, v in sorted(vars(pre).items()) if not k.startswith("_")}
    fields = {k: (v.tolist() if isinstance(v, np.ndarray | torch.Tensor) else v)
              for k, v in fields.items()}
    text = f"{type(pre).__module__}.{type(pre).__qualname__}" + json.dumps(
        fields, sort_keys=True, default=repr)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def cache_key(model: SaliencyReadout, start: int) -> dict[str, Any]:
    """Everything the prefix-boundary tensor depends on (besides the image itself)."""
    bb = model.backbone
    return {
        "format": CACHE_FORMAT,
        "backbone": str(getattr(bb, "name", type(bb.model).__name__)),
        "weights_id": model.weights_id,
        "boundary": model.boundary_name(start),
        "boundary_index": int(start),
        "prefix_stages": model.stage_names[:start],
        "preprocess": describe_preprocess(bb.preprocess),
        "dtype": "float32",
        "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def image_fingerprint(dataset: Any, image_id: str) -> str:
    """SHA-1 of the stimulus file's bytes (size + name as fallback when it is not a file)."""
    stim = dataset[image_id]
    f = Path(getattr(stim, "file", ""))
    if f.is_file():
        h = hashlib.sha1()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        return f"sha1:{h.hexdigest()}"
    return f"meta:{f.name}:{stim.height}x{stim.width}"


_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


def _node_name(image_id: str) -> str:
    if _SAFE.fullmatch(image_id) and not image_id.startswith("__"):
        return image_id
    return "h_" + hashlib.sha1(image_id.encode()).hexdigest()


# ---------------------------------------------------------------------- cache store
class PrefixCache:
    """A Zarr store of prefix-boundary tensors, one ``float32 (C, h, w)`` array per image.

    The root group's attributes hold the :func:`cache_key`; opening a store whose key differs
    raises :class:`StaleCacheError` (``rebuild=True`` wipes it instead). Each image array has
    attributes ``image`` (id), ``source`` (:func:`image_fingerprint`) and ``complete`` (set last);
    entries that are incomplete or whose source differs are recomputed.
    """

    def __init__(self, path: str | Path, key: dict[str, Any], *, rebuild: bool = False):
        import zarr

        self.path = Path(path)
        self.key = key
        for _attempt in range(3):
            if self.path.exists():
                stored = self._stored_key()
                if stored == json.loads(json.dumps(key)):
                    break
                if not rebuild:
                    old = stored if isinstance(stored, dict) else {}
                    wanted = json.loads(json.dumps(key))
                    differ = "; ".join(
                        f"{k}: stored {old.get(k)!r} ≠ requested {wanted.get(k)!r}"
                        for k in sorted(set(old) | set(wanted)) if old.get(k) != wanted.get(k)
                    ) or "no key recorded"
                    raise StaleCacheError(
                        f"{self.path}: cache was built for other settings — {differ}; "
                        "delete it or pass rebuild=True"
                    )
                shutil.rmtree(self.path)
                rebuild = False  # wipe once; a racing writer's fresh store is then validated
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            g = zarr.open_group(str(tmp), mode="w")
            g.attrs["key"] = key
            try:
                os.replace(tmp, self.path)  # atomic: the store appears with its key
            except OSError:  # another process created it first: validate theirs
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            break
        self.group = zarr.open_group(str(self.path), mode="r+")

    def _stored_key(self) -> Any:
        import zarr

        try:
            return dict(zarr.open_group(str(self.path), mode="r").attrs).get("key")
        except Exception:  # unreadable root metadata: not a cache of ours
            return None

    @classmethod
    def for_model(
        cls, cache_dir: str | Path, model: SaliencyReadout, start: int | None = None
    ) -> PrefixCache:
        """The store of ``model``'s prefix boundary under ``cache_dir`` (name carries a key
        hash, so a different backbone / weights / boundary / preprocessing gets its own)."""
        start = model.first_tuned() if start is None else start
        key = cache_key(model, start)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{key['backbone']}-{key['boundary']}")
        return cls(Path(cache_dir) / f"prefix-{slug}-{_key_hash(key)}.zarr", key)

    def _entry(self, image_id: str):
        try:
            return self.group[_node_name(image_id)]
        except Exception:
            return None

    def is_valid(self, image_id: str, source: str) -> bool:
        a = self._entry(image_id)
        if a is None:
            return False
        try:
            at = dict(a.attrs)
        except Exception:
            return False
        return (
            bool(at.get("complete")) and at.get("image") == image_id
            and at.get("source") == source
        )

    def write(self, image_id: str, source: str, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value, dtype=np.float32)
        a = self.group.create_array(
            _node_name(image_id), shape=value.shape, dtype="float32", chunks=value.shape,
            overwrite=True,
        )
        a[...] = value
        a.attrs.update({"image": image_id, "source": source, "complete": True})

    def read(self, image_id: str) -> np.ndarray:
        a = self._entry(image_id)
        if a is None or not dict(a.attrs).get("complete"):
            raise KeyError(f"{self.path}: no complete entry for image {image_id!r}")
        return np.asarray(a[...], dtype=np.float32)


def _load_inputs(model: SaliencyReadout, dataset: Any, ids: Sequence[str]) -> torch.Tensor:
    """Decode and preprocess images (deterministic, no augmentation) → ``(B, 3, h, w)``."""
    xs = []
    for i in ids:
        x = model.backbone.preprocess(dataset.load_image(i))
        xs.append(x if x.dim() == 4 else x[None])
    return torch.cat(xs).to(torch.float32)


def bar_callback(bar: Any) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback (:func:`build_prefix_cache`'s protocol) that moves
    a tqdm bar to ``done`` of ``total``."""

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update


def build_prefix_cache(
    model: SaliencyReadout,
    dataset: Any,
    ids: Iterable[str],
    cache_dir: str | Path,
    *,
    start: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[PrefixCache, int]:
    """Compute (once) the prefix-boundary tensors of ``ids`` into a :class:`PrefixCache`.

    Returns the cache and the number of images computed now (0 when everything was cached).
    Images already cached with the same file fingerprint are skipped; the build is resumable.
    """
    start = model.first_tuned() if start is None else start
    cache = PrefixCache.for_model(cache_dir, model, start)
    ids = [str(i) for i in ids]
    todo = [(i, src) for i in ids if not cache.is_valid(i, src := image_fingerprint(dataset, i))]
    dev = model.readout.weight.device
    for b in range(0, len(todo), batch_size):
        chunk = todo[b : b + batch_size]
        x = _load_inputs(model, dataset, [i for i, _ in chunk]).to(dev)
        feat = model.prefix(x, start).cpu().numpy()
        for (i, src), f in zip(chunk, feat, strict=True):
            cache.write(i, src, f)
        if progress is not None:
            progress(min(b + batch_size, len(todo)), len(todo))
    return cache, len(todo)


# ---------------------------------------------------------------------- checkpoints
def save_readout(path: str | Path, model: SaliencyReadout, metadata: dict[str, Any]) -> Path:
    """Save the trainable state (readout + tuned stages) with metadata, atomically (.pt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "backbone": str(getattr(model.backbone, "name", type(model.backbone.model).__name__)),
        "weights_id": model.weights_id,
        "k": model.k,
        "stage_names": model.stage_names,
        "channels": model.channels,
        "metadata": metadata,
        "state": model.tuned_state_dict(),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_readout(path: str | Path, backbone: Any) -> tuple[SaliencyReadout, dict[str, Any]]:
    """Rebuild a trained :class:`SaliencyReadout` from :func:`save_readout` output and the
    pretrained ``backbone`` it started from; returns (model, metadata)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(path, "checkpoint file does not exist") from None
    except Exception as e:
        raise DataError(path, f"cannot read checkpoint: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(path, f"not a {CHECKPOINT_FORMAT} checkpoint")
    wid = str(getattr(backbone, "weights_id", "unknown"))
    if payload["weights_id"] != wid:
        raise DataError(
            path, f"trained from backbone weights {payload['weights_id']}, given {wid}"
        )
    model = SaliencyReadout(backbone, payload["k"], channels=payload["channels"])
    if model.stage_names != list(payload["stage_names"]):
        raise DataError(path, "backbone stages differ from the checkpoint's")
    model.load_tuned_state_dict(payload["state"])
    return model, dict(payload["metadata"])

