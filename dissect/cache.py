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

Integrity: every chunk carries a CRC-32C (Zarr's ``crc32c`` codec: a damaged chunk raises on
read instead of decoding to other values), and ``<store>/checksums`` (n_batches, n_arrays)
records a checksum (BLAKE2b, 64 bits) of each batch's chunk *files*, written after the chunks
and before ``done[b]``. This ties every chunk to its position, so a truncated, zeroed,
bit-flipped, swapped or deleted chunk is found by `verify_store` (``dissect verify STORE``),
refused when read (`open_activations` raises a `DataError` naming the store, layer and
images), and recomputed by the next `prepare_cache` with the same arguments, which treats
every damaged batch as pending.

Concurrency: one writer per store. `prepare_cache` takes an exclusive lock on ``<store>.lock``
(a sibling file; the holder's pid is written in it) and fails fast with a `DataError` naming
the store and the holder's pid when another process holds it; it never waits. The lock is held
from before the store is checked or created until the returned plan is closed
(`CachePlan.close`, ``with plan:``) or garbage-collected, or the process ends (the kernel
releases it even after ``kill -9``, so a lock is never stale). The batches of a plan may be
computed by threads or Dask workers of the holder: they write disjoint chunks. `verify_store`
takes the same lock, so it never reports a batch that is being written as damaged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
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
from dask.base import tokenize
from filelock import FileLock, Timeout
from torch import Tensor
from tqdm.auto import tqdm
from zarr.codecs import BloscCodec, Crc32cCodec

from dissect.backbones import Backbone
from dissect.capture import ClassLogit, LayerCapture, class_logit, top1_logit
from dissect.errors import DataError, StaleCacheError
from dissect.preprocess import Preprocess
from dissect.provenance import hash_files

log = logging.getLogger("dissect.cache")

FORMAT = "dissect.activations/2"
_FORMAT_FAMILY = "dissect.activations/"  # earlier formats are ours too (rebuilt, never refused)
# Blosc lz4 (level 1) with byte shuffle: about 40% of the raw float16 size and 35–55% cheaper to
# write than zarr's default zstd (bench/extraction_overhead.py), which keeps extraction close to
# a bare forward loop.
_COMPRESSOR = BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
# each chunk ends with the CRC-32C of its compressed bytes: damage raises on read
_CODECS = (_COMPRESSOR, Crc32cCodec())
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
COMPUTING_MODULES = ("backbones.py", "preprocess.py", "capture.py", "cache.py")


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
        """Boolean array: which batches are marked complete (an unreadable mark counts as not
        done; `prepare_cache` checks the marked chunks against their checksums)."""
        return _done_flags(self.store)

    def pending(self) -> list[int]:
        return [int(b) for b in np.flatnonzero(~self.done())]

    def close(self) -> None:
        """Release this plan's hold on the store's writer lock (idempotent; also done when the
        plan is garbage-collected). Copies of a plan (pickled to Dask workers) hold nothing."""
        fin = _PLAN_FINALIZERS.pop(id(self), None)
        if fin is not None:
            fin()

    def __enter__(self) -> CachePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# One writer per store: an exclusive lock on ``<store>.lock``
# --------------------------------------------------------------------------------------------

_PLAN_FINALIZERS: dict[int, weakref.finalize] = {}
_HELD: dict[str, list] = {}  # lock path -> [FileLock, holds in this process]
_HELD_LOCK = threading.Lock()


def lock_path(store: str | Path) -> Path:
    """The writer lock of ``store``: a sibling file ``<store>.lock`` holding the holder's pid."""
    store = Path(store).absolute()
    return store.with_name(store.name + ".lock")


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder_pid(path: Path, wait: float = 1.0) -> str:
    """The pid the lock's holder wrote into the lock file, or "?". The holder writes it right
    after taking the lock: a process that lost the race may look before that, so it retries
    for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pid = path.read_text().strip()
        except OSError:
            pid = ""
        if pid or time.monotonic() >= deadline:
            return pid or "?"
        time.sleep(0.02)


def _acquire(store: Path) -> str:
    """Take (or, in the process that holds it, re-enter) the writer lock of ``store``; fail fast
    with a `DataError` naming the store and the holder's pid when another process holds it."""
    path = lock_path(store)
    key = str(path)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
            return key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(key, timeout=0, thread_local=False, preserve_lock_file=True,
                            on_acquired=_write_pid)
            lock.acquire()
        except Timeout:
            pid = _holder_pid(path)
            raise DataError(store, f"another process (pid {pid}) is writing this activation "
                                   f"cache (lock {path}); wait until it has finished and run "
                                   "again (the lock goes with its process)") from None
        except OSError as err:
            raise DataError(store, f"cannot take the writer lock {path}: {err}") from err
        _HELD[key] = [lock, 1]
        return key


def _release(key: str) -> None:
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            held[0].release()


def _hold_for(plan: CachePlan, key: str) -> None:
    """Tie one hold of the lock ``key`` to ``plan``: released by `CachePlan.close` or when the
    plan is garbage-collected."""
    pid = id(plan)

    def release() -> None:
        _PLAN_FINALIZERS.pop(pid, None)
        _release(key)

    _PLAN_FINALIZERS[pid] = weakref.finalize(plan, release)


# --------------------------------------------------------------------------------------------
# Chunk files, their checksums and the completion marks
# --------------------------------------------------------------------------------------------


def _crc(path: Path) -> int | None:
    """Checksum of a file's bytes (BLAKE2b, 64 bits, as an int); None when there is no such
    file. Not a CRC of the whole file: a chunk ends with the CRC-32C of what precedes it, and
    the CRC of a message followed by its own CRC is the same constant for every message."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _chunk_key(array: str, batch: int, ndim: int) -> str:
    """Key of batch ``batch``'s chunk of an array created by `_create` (default v3 chunk key
    encoding: ``c/<i>/<j>/...``, one chunk along every axis but the first)."""
    return "/".join([array, "c", str(batch), *["0"] * (ndim - 1)])


def _data_arrays(attrs: dict[str, Any]) -> list[str]:
    """The arrays holding per-batch results, in the column order of ``checksums``."""
    out = [f"act/{layer}/activation" for layer in attrs["layers"]]
    if attrs.get("gradients"):
        out += [f"grad/{layer}/gradient" for layer in attrs["layers"]]
    return out


def _static_files(store: Path, attrs: dict[str, Any]) -> dict[str, int | None]:
    """Checksums of the chunk files of the coordinate arrays (``image``, ``unit``)."""
    out: dict[str, int | None] = {}
    for array in _data_arrays(attrs):
        group = array.rsplit("/", 1)[0]
        for coord in ("image", "unit"):
            root = store / group / coord / "c"
            for f in sorted(root.rglob("*")) if root.is_dir() else []:
                if f.is_file():
                    out[f.relative_to(store).as_posix()] = _crc(f)
    return out


def _done_flags(store: Path) -> np.ndarray:
    """``done`` as booleans; a mark whose chunk cannot be decoded counts as not done."""
    arr = zarr.open_array(store=str(store), path="done", mode="r")
    try:
        return np.asarray(arr[:], dtype=bool)
    except Exception:  # noqa: BLE001 - a damaged mark: read them one by one
        flags = np.zeros(arr.shape[0], dtype=bool)
        for b in range(arr.shape[0]):
            try:
                flags[b] = bool(arr[b])
            except Exception:  # noqa: BLE001
                flags[b] = False
        return flags


def _layer_of(array: str) -> str:
    return array.split("/")[1] if array.count("/") >= 2 else array


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
    if attrs is None or not str(attrs.get("format", "")).startswith(_FORMAT_FAMILY):
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
                       encoding={var: {"chunks": chunks, "compressors": list(_CODECS)}})
    n_arrays = len(plan.layers) * len(groups)
    root.create_array("done", shape=(plan.n_batches,), chunks=(1,), dtype="bool",
                      fill_value=False, compressors=[Crc32cCodec()])
    root.create_array("checksums", shape=(plan.n_batches, n_arrays), chunks=(1, n_arrays),
                      dtype="uint64", fill_value=0, compressors=[Crc32cCodec()])
    static = _static_files(plan.store, {"layers": list(plan.layers),
                                        "gradients": plan.gradients})
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
        "coords_checksums": static,
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

    key = _acquire(store)  # held from here until the returned plan is closed
    try:
        plan = _prepare_locked(store, args, fingerprints, overwrite, plan_with, lambda: (
            _probe_shapes(backbone, layer_list, preprocess, dataset, ids[0])), backbone)
    except BaseException:
        _release(key)
        raise
    _hold_for(plan, key)
    return plan


def _prepare_locked(store: Path, args: dict[str, Any], fingerprints: dict[str, str],
                    overwrite: bool, plan_with: Callable[[dict], CachePlan],
                    probe: Callable[[], dict], backbone: Backbone) -> CachePlan:
    """`prepare_cache` once the writer lock is held."""
    attrs = _root_attrs(store) if store.exists() else None
    if store.exists():
        ours = attrs is not None and str(attrs.get("format", "")).startswith(_FORMAT_FAMILY)
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
            _repair(plan, attrs)
            _recompute_changed(plan, attrs.get("image_sha256") or {}, fingerprints)
            return plan
    plan = plan_with(probe())
    store.parent.mkdir(parents=True, exist_ok=True)
    _create(plan, args, backbone, fingerprints)
    return plan


def _repair(plan: CachePlan, attrs: dict[str, Any]) -> None:
    """Mark not-done every batch that `verify_store` finds damaged or missing (so that the run
    recomputes it) and rewrite damaged coordinate arrays; say what was found."""
    problems = [p for p in _inspect(plan.store, attrs) if p.kind != "incomplete"]
    if not problems:
        return
    for p in problems:
        log.warning("%s; recomputing it", p)
    store = str(plan.store)
    batches = sorted({p.batch for p in problems if p.batch is not None})
    if batches:
        done = zarr.open_array(store=store, path="done", mode="r+")
        crc = zarr.open_array(store=store, path="checksums", mode="r+")
        for b in batches:  # rewrites a damaged mark or checksum row as well
            done[b] = False
            crc[b] = 0
    if any(p.batch is None for p in problems):  # a coordinate array: write it again
        groups = sorted({a.rsplit("/", 1)[0] for a in _data_arrays(attrs)})
        for group in groups:
            layer = group.split("/")[1]
            zarr.open_array(store=store, path=f"{group}/image", mode="r+")[:] = np.array(
                plan.ids, dtype=object)
            zarr.open_array(store=store, path=f"{group}/unit", mode="r+")[:] = np.arange(
                plan.shapes[layer][0])
        zarr.open_group(store, mode="r+").attrs["coords_checksums"] = _static_files(
            plan.store, attrs)


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


def _mark_done(store: Path, batch: int, arrays: Sequence[str]) -> None:
    """Record the checksums of batch ``batch``'s chunk files of ``arrays``, then mark it done (in
    that order: a batch marked done always has its checksums)."""
    crcs = []
    for array in arrays:
        c = _crc(store / _chunk_key(array, batch, 4))
        if c is None:
            raise DataError(store, f"{array}: the chunk of batch {batch} is not on disk after "
                                   "it was written")
        crcs.append(c)
    zarr.open_array(store=str(store), path="checksums", mode="r+")[batch] = np.array(
        crcs, dtype=np.uint64)
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
    ids = plan.batch_ids(batch)
    try:
        done = zarr.open_array(store=str(plan.store), path="done", mode="r+")
        try:
            marked = bool(done[batch])
        except Exception:  # noqa: BLE001 - a damaged mark: recompute and rewrite it
            marked = False
        if marked and not force:
            return False
        if marked:  # recomputed: not done until its new chunks and checksums are written
            done[batch] = False
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - name the store and the batch
        raise DataError(plan.store, f"cannot read the completion mark of batch {batch} (images "
                                    f"{', '.join(ids)}): {err}") from err
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
    arrays = []
    for layer in plan.layers:
        data = _to_numpy(acts[layer], plan.dtype, f"layer {layer}", ids)
        arrays.append(_write_checked(plan, f"act/{layer}/activation", start, data, ids))
    for layer in plan.layers if grads else ():  # the column order of ``checksums``
        data = _to_numpy(grads[layer], GRADIENT_DTYPE, f"gradient at {layer}", ids)
        arrays.append(_write_checked(plan, f"grad/{layer}/gradient", start, data, ids))
    stored = _data_arrays({"layers": plan.layers, "gradients": plan.gradients})
    if arrays != stored:
        raise DataError(plan.store, f"batch {batch} (images {', '.join(ids)}): wrote arrays "
                                    f"{arrays}, the store holds {stored}")
    try:
        _mark_done(plan.store, batch, arrays)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - name the store and the batch
        raise DataError(plan.store, f"cannot mark batch {batch} (images {', '.join(ids)}) "
                                    f"done: {err}") from err
    return True


def _write_checked(plan: CachePlan, array: str, start: int, data: np.ndarray,
                   ids: Sequence[str]) -> str:
    """`_write_block`, with a failure named by store, layer and images; returns ``array``."""
    try:
        _write_block(plan.store, array, start, data)
    except Exception as err:  # noqa: BLE001
        raise DataError(plan.store, f"layer {_layer_of(array)} ({array}): cannot write images "
                                    f"{', '.join(ids)}: {err}") from err
    return array


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
    with prepare_cache(dataset, backbone, layers, store, preprocess=preprocess,
                       batch_size=batch_size, dtype=dtype, gradients=gradients,
                       overwrite=overwrite) as plan:
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
    ``complete`` (the completion marks; `verify_store` checks them against the chunks)."""
    store = Path(store)
    attrs = _root_attrs(store) if store.exists() else None
    if attrs is None or not str(attrs.get("format", "")).startswith(_FORMAT_FAMILY):
        raise DataError(store, "not a dissect activation cache")
    if attrs.get("format") != FORMAT:
        raise DataError(store, f"activation cache of an earlier format ({attrs.get('format')}, "
                               f"this version reads {FORMAT}); rerun the extraction to rebuild "
                               "it")
    if attrs.get("state") != "ready":
        raise DataError(store, "activation cache creation was interrupted; rerun the extraction")
    try:
        done = _done_flags(store)
    except Exception as err:  # noqa: BLE001 - no readable completion marks
        raise DataError(store, f"unreadable completion marks (done): {err}") from err
    arrays = _data_arrays(attrs)
    for b in np.flatnonzero(done):  # never claim a batch whose chunks are not on disk
        done[b] = all((store / _chunk_key(a, int(b), 4)).is_file() for a in arrays)
    return {**attrs, "n_batches": int(done.size), "n_done": int(done.sum()),
            "complete": bool(done.all())}


@dataclass(frozen=True)
class StoreProblem:
    """One thing `verify_store` found wrong: ``kind`` is ``missing`` (a chunk of a batch marked
    done is not on disk), ``damaged`` (its bytes differ from those written: truncated, zeroed,
    bit-flipped, swapped…), ``unreadable`` (a completion mark or checksum row cannot be
    decoded) or ``incomplete`` (a batch not computed yet)."""

    store: str
    array: str
    batch: int | None
    chunk: str | None
    image_ids: tuple[str, ...]
    kind: str
    detail: str = ""

    @property
    def layer(self) -> str:
        return _layer_of(self.array)

    def __str__(self) -> str:
        where = f"layer {self.layer} ({self.array})" if "/" in self.array else self.array
        what = f"chunk {self.chunk}" if self.chunk else f"batch {self.batch}"
        ids = ", ".join(self.image_ids[:20]) + (" …" if len(self.image_ids) > 20 else "")
        text = f"{self.store}: {where}, {what}: {self.kind}"
        text += f" ({self.detail})" if self.detail else ""
        return text + (f"; images {ids}" if ids else "")


def _inspect(store: Path, attrs: dict[str, Any]) -> list[StoreProblem]:
    """Every problem of a ready store of the current format (see `verify_store`)."""
    n_images, bs = int(attrs["n_images"]), int(attrs["batch_size"])
    n_batches = -(-n_images // bs)
    ids: list[str] | None = None
    arrays = _data_arrays(attrs)
    out: list[StoreProblem] = []

    def images(b: int | None) -> tuple[str, ...]:
        nonlocal ids
        if ids is None:
            try:
                raw = zarr.open_array(store=str(store), path=f"{arrays[0].rsplit('/', 1)[0]}"
                                      "/image", mode="r")[:]
                ids = [str(i) for i in raw]
            except Exception:  # noqa: BLE001 - damaged coordinates: reported on their own
                ids = [f"#{i}" for i in range(n_images)]
        return tuple(ids) if b is None else tuple(ids[b * bs:(b + 1) * bs])

    def problem(array: str, b: int | None, chunk: str | None, kind: str, detail: str = ""
                ) -> None:
        out.append(StoreProblem(str(store), array, b, chunk, images(b) if b is not None else (),
                                kind, detail))

    static = attrs.get("coords_checksums") or {}
    for rel, want in static.items():
        got = _crc(store / rel)
        if got != want:
            problem(rel.split("/c/")[0], None, rel, "missing" if got is None else "damaged",
                    "coordinate array")
    done_arr = zarr.open_array(store=str(store), path="done", mode="r")
    crc_arr = zarr.open_array(store=str(store), path="checksums", mode="r")
    for b in range(n_batches):
        try:
            done = bool(done_arr[b])
        except Exception as err:  # noqa: BLE001
            problem("done", b, _chunk_key("done", b, 1), "unreadable", f"completion mark: {err}")
            continue
        if not done:
            problem("done", b, None, "incomplete", "not computed yet")
            continue
        try:
            crcs = np.asarray(crc_arr[b])
        except Exception as err:  # noqa: BLE001
            problem("checksums", b, _chunk_key("checksums", b, 2), "unreadable",
                    f"checksums: {err}")
            continue
        for j, array in enumerate(arrays):
            key = _chunk_key(array, b, 4)
            got = _crc(store / key)
            if got is None:
                problem(array, b, key, "missing", "the batch is marked done")
            elif got != int(crcs[j]):
                problem(array, b, key, "damaged", "checksum differs from the one written")
    return out


def verify_store(store: str | Path) -> list[StoreProblem]:
    """Check an activation store: every chunk of every batch marked done is on disk with the
    bytes that were written (its checksum), the completion marks and checksums decode, and every
    batch is done. Returns the problems found (empty: the store is complete and intact); each
    names the store, the layer, the chunk and its images. Rerunning the extraction with the
    same arguments recomputes every damaged or missing batch. Takes the writer lock (fails fast
    while an extraction writes the store)."""
    store = Path(store)
    store_metadata(store)  # raises a DataError naming the store when it is none of ours
    attrs = _root_attrs(store) or {}
    key = _acquire(store)
    try:
        return _inspect(store, attrs)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. a damaged array's metadata
        raise DataError(store, f"cannot verify the activation cache: {err}") from err
    finally:
        _release(key)


class _CheckedChunks:
    """Array-like view of one stored array for `dask.array.from_array`: before reading a batch
    marked done it checks that the chunk file is there with the bytes that were written, and
    every failure is a `DataError` naming the store, the layer and the images."""

    def __init__(self, store: Path, array: str, ids: Sequence[str], batch_size: int,
                 shape: tuple[int, ...], dtype: np.dtype, done: np.ndarray,
                 crcs: np.ndarray, column: int) -> None:
        self.store, self.array, self.ids, self.batch_size = store, array, list(ids), batch_size
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.done, self.crcs, self.column = done, crcs, column
        self._zarr: Any = None

    def __dask_tokenize__(self) -> tuple:
        return ("dissect-checked", str(self.store), self.array, self.shape, str(self.dtype),
                self.done.tobytes(), self.crcs.tobytes())

    def _fail(self, rows: Sequence[int], problem: str) -> DataError:
        ids = [self.ids[i] for i in rows]
        shown = ", ".join(ids[:20]) + (" …" if len(ids) > 20 else "")
        return DataError(self.store, f"layer {_layer_of(self.array)} ({self.array}), images "
                                     f"{shown}: {problem}; run `dissect verify {self.store}` "
                                     "and rerun the extraction to repair it")

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = np.atleast_1d(np.arange(self.shape[0])[key[0]]) if key else np.arange(
            self.shape[0])
        for b in sorted({int(r) // self.batch_size for r in rows}):
            if not self.done[b]:
                continue  # not computed (allow_partial): reads as NaN
            chunk = _chunk_key(self.array, b, self.ndim)
            got = _crc(self.store / chunk)
            batch_rows = range(b * self.batch_size, min((b + 1) * self.batch_size,
                                                        self.shape[0]))
            if got is None:
                raise self._fail(batch_rows, f"chunk {chunk} is missing")
            if got != int(self.crcs[b, self.column]):
                raise self._fail(batch_rows, f"chunk {chunk} is damaged (its checksum "
                                             "differs from the one written)")
        try:
            if self._zarr is None:
                self._zarr = zarr.open_array(store=str(self.store), path=self.array, mode="r")
            return np.asarray(self._zarr[key])
        except Exception as err:  # noqa: BLE001 - name the store, layer and images
            raise self._fail([int(r) for r in rows], f"cannot read: {err}") from err


def _open(store: str | Path, layer: str, prefix: str, var: str,
          allow_partial: bool) -> xr.DataArray:
    meta = store_metadata(store)
    if layer not in meta["layers"]:
        raise KeyError(f"{store}: no layer {layer!r}; stored: {meta['layers']}")
    if prefix == "grad" and not meta.get("gradients"):
        raise KeyError(f"{store}: no gradients were stored")
    try:
        ds = xr.open_zarr(str(store), group=f"{prefix}/{layer}", consolidated=False, chunks={})
        arr = ds[var]
        ids = [str(v) for v in arr["image"].values]
        done = _done_flags(Path(store))
        crcs = np.asarray(zarr.open_array(store=str(store), path="checksums", mode="r")[:])
    except Exception as err:  # noqa: BLE001 - name the store and the layer
        raise DataError(store, f"layer {layer}: cannot open {prefix}/{layer}/{var}: {err}; run "
                               f"`dissect verify {store}`") from err
    if not meta["complete"] and not allow_partial:
        bs = int(meta["batch_size"])
        todo = [i for b in range(done.size)
                if not (done[b] and all((Path(store) / _chunk_key(f, b, 4)).is_file()
                                        for f in _data_arrays(meta)))
                for i in ids[b * bs:(b + 1) * bs]]
        shown = ", ".join(todo[:20]) + (" …" if len(todo) > 20 else "")
        raise DataError(store, f"layer {layer}: extraction incomplete ({meta['n_done']}/"
                               f"{meta['n_batches']} batches; images not on disk: {shown}); "
                               "rerun the extraction with the same arguments, or pass "
                               "allow_partial=True (missing images read as NaN)")
    path = f"{prefix}/{layer}/{var}"
    checked = _CheckedChunks(Path(store), path, ids, int(meta["batch_size"]), arr.shape,
                             arr.dtype, done, crcs, _data_arrays(meta).index(path))
    data = da.from_array(checked, chunks=arr.data.chunks, lock=False, asarray=False,
                         meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
                         name=f"{Path(store).name}-{path}-" + tokenize(checked))
    arr = arr.copy(data=data).assign_coords(image=np.array(ids))
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
    "CachePlan", "ImageSource", "StoreProblem", "extract_activations", "extract_batch",
    "lock_path", "open_activations", "open_gradients", "prepare_cache",
    "resolve_gradient_target", "store_metadata", "verify_store",
]
