"""Resumable Zarr cache of unit activations (and optionally their gradients).

Layout of a store (Zarr v3, readable with xarray)::

    <store>/                      root attrs: backbone, weights_id, preprocessing, layers, dtype,
                                  image-id hash, package versions, args (+ args_hash)
    <store>/act/<layer>/          xarray group: variable ``activation`` (image, unit, y, x),
                                  coords ``image`` (str ids) and ``unit`` (int); attrs ``layer`` …
    <store>/grad/<layer>/         same, variable ``gradient`` (when gradients were asked for)
    <store>/done                  bool (n_batches,), one chunk per batch: batch b is complete

Chunks are ``batch_size`` images × all units × y × x, so batch b owns exactly one chunk of every
array (and of ``done``): writers of different batches never touch the same file, and
`extract_batch` can be mapped over batches by Dask (``dask.delayed(extract_batch)(plan, b, …)``).

Resumability: `prepare_cache` creates every array up front (unwritten chunks read as NaN);
`extract_batch` writes a batch's chunks for all layers and only then sets ``done[b]``. A run
killed at any point (even ``kill -9``) and rerun with the same arguments skips the batches marked
done and recomputes the rest, which gives the same arrays as an uninterrupted run. A store made
with other arguments (layers, weights, preprocessing, dtype, batch size, images, gradient target)
raises `StaleCacheError` naming what differs, unless ``overwrite=True``. The key includes a hash
of the code that computes the activations (`code_hash`: backbones, hooks, this module), so a
change there makes the store stale too. Image *contents* are checked per image: the store records
a hash of every image file (`image_fingerprints`); a rerun recomputes exactly the batches whose
images changed since they were written, and says which.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import dask.array as da
import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor
from tqdm.auto import tqdm
from zarr.codecs import BloscCodec

from dissect.backbones import Backbone
from dissect.capture import ClassLogit, LayerCapture, Preprocess, class_logit, top1_logit
from dissect.errors import DataError, StaleCacheError
from dissect.provenance import hash_files

log = logging.getLogger("dissect.cache")

FORMAT = "dissect.activations/1"
# Blosc lz4 (level 1) with byte shuffle: about 40% of the raw float16 size and 35–55% cheaper to
# write than zarr's default zstd (bench/extraction_overhead.py), which keeps extraction close to
# a bare forward loop.
_COMPRESSOR = BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
DTYPES = ("float16", "float32")
GRADIENT_DTYPE = "float32"  # float16 would flush small gradients (< 6e-8) to zero
_VERSIONED = ("torch", "numpy", "zarr", "xarray", "dask", "captum", "dissect")


@runtime_checkable
class ImageSource(Protocol):
    """What extraction needs from a dataset (e.g. `dissect.data.FixationDataset`)."""

    @property
    def ids(self) -> Sequence[str]: ...

    def load_image(self, image_id: str) -> np.ndarray: ...


GradientSpec = str | Callable[[Tensor], Tensor] | None


def resolve_gradient_target(spec: GradientSpec) -> tuple[str | None, Callable | None]:
    """``None`` → no gradients; ``"top1"`` → each image's top-1 class logit (`top1_logit`);
    ``"logit:<k>"`` → the logit of class k; a callable ``(B, K) logits → (B,)`` is identified in
    the metadata by its module and qualified name (rename it when you change what it does)."""
    if spec is None:
        return None, None
    if isinstance(spec, str):
        if spec == "top1":
            return "top1_logit", top1_logit
        if spec.startswith("logit:") and spec[6:].isdigit():
            return f"logit:{int(spec[6:])}", class_logit(int(spec[6:]))
        raise ValueError(f"gradients must be None, 'top1', 'logit:<k>' or a callable, not {spec!r}")
    if isinstance(spec, ClassLogit):
        return f"logit:{spec.index}", spec
    if callable(spec):
        name = getattr(spec, "__qualname__", None) or type(spec).__qualname__
        return f"callable:{getattr(spec, '__module__', '?')}.{name}", spec
    raise TypeError(f"gradients must be None, a string or a callable, not {type(spec).__name__}")


def package_versions() -> dict[str, str]:
    from dissect.provenance import versions

    return versions(_VERSIONED)


def _sha(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


#: the modules whose code computes what a store holds (relative to the package)
COMPUTING_MODULES = ("backbones.py", "capture.py", "cache.py")


def code_hash() -> str:
    """SHA-256 (16 hex) of the source of :data:`COMPUTING_MODULES`: part of a store's key."""
    root = Path(__file__).resolve().parent
    return hash_files([root / m for m in COMPUTING_MODULES])


def image_fingerprints(dataset: ImageSource, ids: Sequence[str]) -> dict[str, str]:
    """Content hash (SHA-256, 16 hex) of each image: its file's bytes when the dataset names a
    file (``dataset[id].file``), else the decoded pixels."""
    out = {}
    for i in ids:
        f = getattr(dataset[i], "file", None) if hasattr(dataset, "__getitem__") else None
        if f is not None and Path(f).is_file():
            out[i] = hash_files([f])
        else:
            img = _load(dataset, i)
            out[i] = hashlib.sha256(str(img.shape).encode() + img.tobytes()).hexdigest()[:16]
    return out


def image_ids_hash(ids: Sequence[str]) -> str:
    """SHA-256 (16 hex) of the ordered image ids, newline-joined."""
    return _sha("\n".join(ids))


@dataclass(frozen=True)
class CachePlan:
    """Everything a worker needs to compute and write one batch (picklable when the gradient
    target is a module-level function)."""

    store: Path
    backbone: str
    weights_id: str
    ids: tuple[str, ...]
    layers: tuple[str, ...]
    shapes: dict[str, tuple[int, int, int]]
    batch_size: int
    dtype: str
    preprocess: Preprocess
    gradients: str | None = None
    target: Callable[[Tensor], Tensor] | None = None

    @property
    def n_batches(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def batch_ids(self, batch: int) -> tuple[str, ...]:
        if not 0 <= batch < self.n_batches:
            raise IndexError(f"batch {batch} out of range 0..{self.n_batches - 1}")
        return self.ids[batch * self.batch_size : (batch + 1) * self.batch_size]

    def done(self) -> np.ndarray:
        """Boolean array: which batches are complete on disk."""
        return np.asarray(zarr.open_array(store=str(self.store), path="done", mode="r")[:])

    def pending(self) -> list[int]:
        return [int(b) for b in np.flatnonzero(~self.done())]


def _args(backbone: Backbone, layers: Sequence[str], preprocess: Preprocess, ids: Sequence[str],
          batch_size: int, dtype: str, gradients: str | None) -> dict[str, Any]:
    """Everything that determines the store's content (and layout). Package versions are
    recorded but not part of the key: an upgrade does not invalidate a cache by itself."""
    return {
        "format": FORMAT,
        "backbone": backbone.name,
        "weights_id": backbone.weights_id,
        "preprocess": preprocess.to_dict(),
        "layers": list(layers),
        "dtype": dtype,
        "batch_size": int(batch_size),
        "n_images": len(ids),
        "image_ids_sha256": image_ids_hash(ids),
        "gradients": gradients,
        "code_sha256": code_hash(),
    }


def args_hash(args: dict[str, Any]) -> str:
    return _sha(json.dumps(args, sort_keys=True))


def _describe_diff(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    parts = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if a != b:
            parts.append(f"{key}: stored {a!r} ≠ requested {b!r}")
    return "; ".join(parts) or "arguments hash differs"


def _root_attrs(store: Path) -> dict[str, Any] | None:
    """Root attributes of a Zarr store at ``store``; None when no Zarr group is there."""
    if not (store / "zarr.json").is_file():
        return None
    try:
        return dict(zarr.open_group(str(store), mode="r").attrs)
    except Exception as err:  # noqa: BLE001 - unreadable metadata
        raise DataError(store, f"unreadable Zarr metadata: {err}") from err


def _clear(store: Path, attrs: dict[str, Any] | None) -> None:
    """Delete a store that is ours (or an empty directory); refuse anything else."""
    if not store.exists():
        return
    if attrs is None or attrs.get("format") != FORMAT:
        if store.is_dir() and not any(store.iterdir()):
            store.rmdir()
            return
        raise DataError(store, "exists and is not a dissect activation cache; refusing to "
                               "overwrite it (choose another path or delete it yourself)")
    shutil.rmtree(store)


def _probe_shapes(backbone: Backbone, layers: Sequence[str], preprocess: Preprocess,
                  dataset: ImageSource, first_id: str) -> dict[str, tuple[int, int, int]]:
    if preprocess.size is None:
        x = preprocess(_load(dataset, first_id))
    else:
        x = torch.zeros(1, 3, *preprocess.size)
    acts = LayerCapture(backbone, layers).attribute(x)
    return {name: tuple(int(s) for s in acts[name].shape[1:]) for name in layers}


def _load(dataset: ImageSource, image_id: str) -> np.ndarray:
    try:
        img = dataset.load_image(image_id)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - name the image whatever went wrong
        raise DataError(image_id, f"cannot load image: {err}") from err
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(image_id, f"expected a uint8 (H, W, 3) image, got {img.dtype} "
                                  f"{img.shape}")
    return img


def _create(plan: CachePlan, args: dict[str, Any], backbone: Backbone,
            fingerprints: dict[str, str]) -> None:
    root = zarr.open_group(str(plan.store), mode="w", zarr_format=3)
    root.attrs.update({"format": FORMAT, "state": "creating"})
    ids = np.array(plan.ids, dtype=object)
    groups = [("act", "activation", plan.dtype)]
    if plan.gradients is not None:
        groups.append(("grad", "gradient", GRADIENT_DTYPE))
    for prefix, var, dtype in groups:
        for layer in plan.layers:
            shape = (len(plan.ids), *plan.shapes[layer])
            chunks = (plan.batch_size, *plan.shapes[layer])
            attrs = {"layer": layer, "kind": var, "backbone": plan.backbone,
                     "weights_id": plan.weights_id}
            if prefix == "grad":
                attrs["target"] = plan.gradients
            ds = xr.Dataset(
                {var: (("image", "unit", "y", "x"), da.zeros(shape, chunks=chunks, dtype=dtype),
                       attrs)},
                coords={"image": ids, "unit": np.arange(shape[1])},
                attrs=attrs,
            )
            ds.to_zarr(str(plan.store), group=f"{prefix}/{layer}", mode="w", compute=False,
                       consolidated=False, zarr_format=3,
                       encoding={var: {"chunks": chunks, "compressors": [_COMPRESSOR]}})
    root.create_array("done", shape=(plan.n_batches,), chunks=(1,), dtype="bool",
                      fill_value=False)
    root.attrs.update({
        "format": FORMAT,
        "state": "ready",
        "backbone": backbone.name,
        "weights_id": backbone.weights_id,
        "preprocess": plan.preprocess.to_dict(),
        "layers": list(plan.layers),
        "shapes": {k: list(v) for k, v in plan.shapes.items()},
        "dtype": plan.dtype,
        "gradient_dtype": GRADIENT_DTYPE if plan.gradients else None,
        "gradients": plan.gradients,
        "batch_size": plan.batch_size,
        "n_images": len(plan.ids),
        "image_ids_sha256": image_ids_hash(plan.ids),
        "versions": package_versions(),
        "args": args,
        "args_hash": args_hash(args),
        "image_sha256": fingerprints,
    })


def prepare_cache(
    dataset: ImageSource,
    backbone: Backbone,
    layers: Sequence[str] | None,
    store: str | Path,
    *,
    preprocess: Preprocess | None = None,
    batch_size: int = 8,
    dtype: str = "float16",
    gradients: GradientSpec = None,
    overwrite: bool = False,
) -> CachePlan:
    """Check or create the store and return the plan of batches (see `extract_activations`)."""
    store = Path(store)
    ids = [str(i) for i in dataset.ids]
    if not ids:
        raise DataError("dataset", "no images to extract")
    if len(set(ids)) != len(ids):
        raise DataError("dataset", "image ids are not unique")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    layer_list = list(backbone.layers) if layers is None else [str(n) for n in layers]
    unknown = [n for n in layer_list if n not in backbone.layers]
    if unknown:
        raise KeyError(f"{backbone.name} has no layer(s) {unknown}; known: {list(backbone.layers)}")
    order = list(backbone.layers)
    layer_list = sorted(dict.fromkeys(layer_list), key=order.index)
    preprocess = backbone.preprocess if preprocess is None else preprocess
    gname, target = resolve_gradient_target(gradients)
    args = _args(backbone, layer_list, preprocess, ids, batch_size, dtype, gname)
    fingerprints = image_fingerprints(dataset, ids)

    def plan_with(shapes: dict[str, tuple[int, int, int]]) -> CachePlan:
        return CachePlan(store=store, backbone=backbone.name, weights_id=backbone.weights_id,
                         ids=tuple(ids), layers=tuple(layer_list), shapes=shapes,
                         batch_size=int(batch_size), dtype=dtype, preprocess=preprocess,
                         gradients=gname, target=target)

    attrs = _root_attrs(store) if store.exists() else None
    if store.exists():
        ours = attrs is not None and attrs.get("format") == FORMAT
        ready = ours and attrs.get("state") == "ready"
        if not ours:
            _clear(store, attrs)  # only an empty directory passes; anything else raises
        elif overwrite or not ready:  # a store whose creation was interrupted holds no results
            _clear(store, attrs)
        elif attrs.get("args_hash") != args_hash(args):
            raise StaleCacheError(
                f"{store}: activation cache was made with other arguments — "
                f"{_describe_diff(attrs.get('args', {}), args)}. Pass overwrite=True to rebuild "
                "it, or use another store path."
            )
        else:
            shapes = {k: tuple(int(s) for s in v) for k, v in attrs["shapes"].items()}
            plan = plan_with(shapes)
            _recompute_changed(plan, attrs.get("image_sha256") or {}, fingerprints)
            return plan
    plan = plan_with(_probe_shapes(backbone, layer_list, preprocess, dataset, ids[0]))
    store.parent.mkdir(parents=True, exist_ok=True)
    _create(plan, args, backbone, fingerprints)
    return plan


def _recompute_changed(plan: CachePlan, stored: dict[str, str], current: dict[str, str]) -> None:
    """Mark not-done every batch holding an image whose content hash differs from the one
    recorded when the store was made (a replaced or edited file with the same id), then record
    the new hashes (in that order: an interruption in between recomputes them again)."""
    changed = [i for i in plan.ids if stored.get(i) != current[i]]
    if not changed:
        return
    batches = sorted({plan.ids.index(i) // plan.batch_size for i in changed})
    log.warning("%s: %d image(s) changed since they were cached (%s); recomputing batch(es) %s",
                plan.store, len(changed), ", ".join(changed[:5]) + (" …" if len(changed) > 5
                                                                    else ""), batches)
    done = zarr.open_array(store=str(plan.store), path="done", mode="r+")
    for b in batches:
        done[b] = False
    zarr.open_group(str(plan.store), mode="r+").attrs["image_sha256"] = current


def _write_block(store: Path, path: str, start: int, data: np.ndarray) -> None:
    """Write ``data`` at images ``start:start+len(data)`` of array ``path`` (one whole chunk)."""
    arr = zarr.open_array(store=str(store), path=path, mode="r+")
    arr[start : start + len(data)] = data


def _mark_done(store: Path, batch: int) -> None:
    zarr.open_array(store=str(store), path="done", mode="r+")[batch] = True


def _to_numpy(t: Tensor, dtype: str, what: str, ids: Sequence[str]) -> np.ndarray:
    # cast and check in torch (vectorised, multi-threaded; numpy's float16 cast is scalar code)
    t = t.detach().cpu().to(getattr(torch, dtype))
    finite = torch.isfinite(t).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = [ids[i] for i in range(len(ids)) if not bool(finite[i])]
        raise DataError(bad[0], f"{what} has non-finite values in {dtype} (images {bad[:5]}); "
                                "use dtype='float32' if float16 overflowed")
    return t.numpy()


_MODEL_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_LOCKS_LOCK = threading.Lock()


def _model_lock(model: torch.nn.Module) -> threading.Lock:
    """Hooks live on module objects, so two threads capturing on one model would see each
    other's activations: the forward/backward of a shared model is serialised (loading, casting
    and writing still overlap). Separate processes have separate models and need no lock."""
    with _LOCKS_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


def extract_batch(
    plan: CachePlan,
    batch: int,
    dataset: ImageSource,
    backbone: Backbone,
    *,
    capture: LayerCapture | None = None,
    force: bool = False,
) -> bool:
    """Compute batch ``batch`` of ``plan`` and write its chunks; return False when it was done.

    Writes only the chunks of this batch (all layers, then gradients), then marks it done, so
    concurrent calls for different batches are safe (threads sharing one model take turns for
    the forward pass) and an interrupted call is simply redone.
    """
    if (backbone.name, backbone.weights_id) != (plan.backbone, plan.weights_id):
        raise StaleCacheError(
            f"{plan.store}: plan is for {plan.backbone} ({plan.weights_id}), got "
            f"{backbone.name} ({backbone.weights_id})"
        )
    if not force and bool(zarr.open_array(store=str(plan.store), path="done", mode="r")[batch]):
        return False
    ids = plan.batch_ids(batch)
    start = batch * plan.batch_size
    x = plan.preprocess([_load(dataset, i) for i in ids])
    cap = capture if capture is not None else LayerCapture(backbone, plan.layers)
    with _model_lock(backbone.model):
        if plan.target is not None:
            acts, grads = cap.gradients(x, plan.target)
        else:
            acts, grads = cap.attribute(x), {}
    for layer in plan.layers:
        if tuple(acts[layer].shape[1:]) != plan.shapes[layer]:
            raise DataError(ids[0], f"layer {layer} gives maps of shape "
                                    f"{tuple(acts[layer].shape[1:])}, the store holds "
                                    f"{plan.shapes[layer]} (images of another size?)")
    for layer in plan.layers:
        data = _to_numpy(acts[layer], plan.dtype, f"layer {layer}", ids)
        _write_block(plan.store, f"act/{layer}/activation", start, data)
    for layer in grads:
        data = _to_numpy(grads[layer], GRADIENT_DTYPE, f"gradient at {layer}", ids)
        _write_block(plan.store, f"grad/{layer}/gradient", start, data)
    _mark_done(plan.store, batch)
    return True


def extract_activations(
    dataset: ImageSource,
    backbone: Backbone,
    layers: Sequence[str] | None,
    store: str | Path,
    *,
    preprocess: Preprocess | None = None,
    batch_size: int = 8,
    dtype: str = "float16",
    gradients: GradientSpec = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the unit maps of ``layers`` (None = all) for every image of ``dataset`` to ``store``.

    ``preprocess`` defaults to the backbone's (224×224 bilinear+antialias, ImageNet mean/std).
    ``gradients``: None, ``"top1"`` (gradient of each image's top-1 class logit w.r.t. each
    layer's maps), ``"logit:<k>"`` or a callable on the logits (see `resolve_gradient_target`);
    stored under ``grad/<layer>`` in float32. Resumes an interrupted run with the same
    arguments; other arguments raise `StaleCacheError` unless ``overwrite=True``.
    """
    plan = prepare_cache(dataset, backbone, layers, store, preprocess=preprocess,
                         batch_size=batch_size, dtype=dtype, gradients=gradients,
                         overwrite=overwrite)
    pending = plan.pending()
    capture = LayerCapture(backbone, plan.layers)
    with tqdm(total=plan.n_batches, initial=plan.n_batches - len(pending), unit="batch",
              desc=f"activations {backbone.name}", disable=not progress) as bar:
        for b in pending:
            extract_batch(plan, b, dataset, backbone, capture=capture, force=True)
            bar.update(1)
    return plan.store


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def store_metadata(store: str | Path) -> dict[str, Any]:
    """Root attributes of an activation store plus progress: ``n_batches``, ``n_done``,
    ``complete``."""
    store = Path(store)
    attrs = _root_attrs(store) if store.exists() else None
    if attrs is None or attrs.get("format") != FORMAT:
        raise DataError(store, "not a dissect activation cache")
    if attrs.get("state") != "ready":
        raise DataError(store, "activation cache creation was interrupted; rerun the extraction")
    done = np.asarray(zarr.open_array(store=str(store), path="done", mode="r")[:])
    return {**attrs, "n_batches": int(done.size), "n_done": int(done.sum()),
            "complete": bool(done.all())}


def _open(store: str | Path, layer: str, prefix: str, var: str,
          allow_partial: bool) -> xr.DataArray:
    meta = store_metadata(store)
    if layer not in meta["layers"]:
        raise KeyError(f"{store}: no layer {layer!r}; stored: {meta['layers']}")
    if prefix == "grad" and not meta.get("gradients"):
        raise KeyError(f"{store}: no gradients were stored")
    if not meta["complete"] and not allow_partial:
        raise DataError(store, f"extraction incomplete ({meta['n_done']}/{meta['n_batches']} "
                               "batches); rerun extract_activations with the same arguments, or "
                               "pass allow_partial=True (missing images read as NaN)")
    ds = xr.open_zarr(str(store), group=f"{prefix}/{layer}", consolidated=False, chunks={})
    arr = ds[var]
    arr = arr.assign_coords(image=np.array([str(v) for v in arr["image"].values]))
    keep = ("backbone", "weights_id", "preprocess", "dtype", "gradients", "args_hash")
    arr.attrs.update({k: meta.get(k) for k in keep})
    arr.attrs["layer"] = layer
    return arr


def open_activations(store: str | Path, layer: str, *, allow_partial: bool = False
                     ) -> xr.DataArray:
    """Lazy (dask-backed) DataArray ``activation`` (image, unit, y, x) of one layer."""
    return _open(store, layer, "act", "activation", allow_partial)


def open_gradients(store: str | Path, layer: str, *, allow_partial: bool = False
                   ) -> xr.DataArray:
    """Lazy DataArray ``gradient`` (image, unit, y, x): d target / d activation at ``layer``."""
    return _open(store, layer, "grad", "gradient", allow_partial)


__all__ = [
    "CachePlan", "ImageSource", "extract_activations", "extract_batch", "open_activations",
    "open_gradients", "prepare_cache", "resolve_gradient_target", "store_metadata",
]
