"""Unit × region association (He et al. 2019, Eq. 1).

For every unit u of a layer and every annotated salient region r of image i::

    Assoc(u, r) = NSS( up(A_u), F_i ∩ r ) = mean_{f ∈ F_i ∩ r} (up(A_u)(f) − μ_u) / σ_u

where ``up`` is bilinear upsampling of the unit's activation map to the image size (H, W),
``μ_u``/``σ_u`` are the mean and population std of the upsampled map over the whole image, and
``F_i ∩ r`` are the image's fixations that fall inside region r (``mask[round(y), round(x)]``).
The arithmetic is :func:`dissect.metrics.region_nss` (exact, without materialising up(A_u)).

Regions with no fixation inside, and constant maps, give NaN (counted downstream, never
averaged as 0). Activations come from a Zarr store written by :mod:`dissect.cache`; the work is
one Dask task per image chunk of that store, so memory stays bounded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from dissect.errors import DataError


def region_fixations(dataset, regions, image_id: str, *, drop_first: bool = True):
    """Fixation points of one image and the region id under each (0 = outside every region).

    ``drop_first`` drops each observer's first fixation (OSIE's central starting point), the
    fixations the OSIE region annotations were also built without. The image's region masks
    must have the image's size (``DataError`` naming the image otherwise).
    """
    stim = dataset[image_id]
    if (image_id in regions) and tuple(regions.size(image_id)) != (stim.height, stim.width):
        # masks of another size would put fixations in the wrong regions (or in none) without
        # any point falling outside the mask
        raise DataError(getattr(stim, "file", image_id),
                        f"image {image_id} is {stim.height}x{stim.width} but its region masks "
                        f"are {regions.size(image_id)[0]}x{regions.size(image_id)[1]} (load the "
                        "regions with dataset= to check sizes at load time)")
    points = dataset.points(image_id, drop_first=drop_first)
    if len(points) == 0:
        raise DataError(image_id, "no fixations for this image")
    return points, regions.region_of(image_id, points)


def image_regions(regions, image_id: str) -> pd.DataFrame:
    """The region rows of one image, sorted by region id."""
    table = regions.table
    return table[table["image"] == str(image_id)].sort_values("region")


def associate_image(
    maps: dict[str, np.ndarray],
    image_size: tuple[int, int],
    points: np.ndarray,
    point_regions: np.ndarray,
    region_ids: Sequence[int],
) -> dict[str, np.ndarray]:
    """Eq. 1 for one image: ``{layer: (units, len(region_ids))}`` from maps ``(units, h, w)``."""
    from dissect.metrics import region_nss

    return {
        layer: region_nss(
            np.asarray(a, dtype=np.float64), image_size, points, point_regions,
            regions=list(region_ids),
        )
        for layer, a in maps.items()
    }


def _region_coords(rows: pd.DataFrame) -> dict:
    return {
        "image": ("region", rows["image"].astype(str).to_numpy()),
        "region_id": ("region", rows["region"].astype(np.int64).to_numpy()),
        "category": ("region", rows["category"].astype(str).to_numpy()),
    }


def _associate_chunk(store, layers, image_ids, dataset, regions, drop_first):
    from dissect.cache import open_activations

    blocks = {layer: open_activations(store, layer).sel(image=list(image_ids)) for layer in layers}
    blocks = {layer: da.values for layer, da in blocks.items()}
    out: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    rows = []
    for j, image_id in enumerate(image_ids):
        reg = image_regions(regions, image_id)
        if reg.empty:
            continue
        stim = dataset[image_id]
        points, point_regions = region_fixations(dataset, regions, image_id, drop_first=drop_first)
        res = associate_image(
            {layer: blocks[layer][j] for layer in layers},
            (stim.height, stim.width), points, point_regions, reg["region"].tolist(),
        )
        for layer in layers:
            out[layer].append(res[layer])
        rows.append(reg)
    return out, rows


def associate(
    store: str | Path,
    dataset,
    regions,
    *,
    layers: Iterable[str] | None = None,
    image_ids: Sequence[str] | None = None,
    drop_first: bool = True,
    chunk_images: int = 16,
    scheduler=None,
    progress: bool = False,
    desc: str = "associate",
) -> dict[str, xr.DataArray]:
    """Eq. 1 for every unit of each layer of an activation store and every region.

    Returns ``{layer: DataArray "nss" (unit, region)}`` with region coords ``image``,
    ``region_id``, ``category``. One Dask task per ``chunk_images`` images; ``scheduler`` is any
    value accepted by ``dask.compute(scheduler=...)`` or a ``distributed.Client``.
    ``progress``: a tqdm bar (Dask tasks done / total, named ``desc``) on stderr with a local
    scheduler.
    """
    from dissect.cache import open_activations, store_metadata

    meta = store_metadata(store)
    layers = list(layers) if layers is not None else list(meta["layers"])
    stored = [str(i) for i in open_activations(store, layers[0])["image"].values]
    ids = [str(i) for i in (image_ids if image_ids is not None else stored)]
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:  # each region would be counted once per repetition
        raise DataError("image_ids", f"{len(dup)} image id(s) given more than once, e.g. {dup[:3]}")
    missing = sorted(set(ids) - set(stored))
    if missing:
        raise DataError(
            store, f"{len(missing)} images not in the activation store, e.g. {missing[:3]}"
        )
    chunks = [ids[i : i + chunk_images] for i in range(0, len(ids), chunk_images)]
    tasks = [
        dask.delayed(_associate_chunk)(str(store), layers, c, dataset, regions, drop_first)
        for c in chunks
    ]
    kwargs = {}
    if scheduler is not None and not hasattr(scheduler, "submit"):
        kwargs["scheduler"] = scheduler
    from tqdm.dask import TqdmCallback

    with TqdmCallback(desc=desc, unit="task", disable=not progress):
        results = dask.compute(*tasks, **kwargs)
    rows = [r for _, chunk_rows in results for r in chunk_rows]
    if not rows:
        raise DataError(store, "no annotated regions for any of the requested images")
    coords = _region_coords(pd.concat(rows, ignore_index=True))
    out = {}
    for layer in layers:
        values = np.concatenate([a for chunk_out, _ in results for a in chunk_out[layer]], axis=1)
        out[layer] = xr.DataArray(
            values.astype(np.float32),
            dims=("unit", "region"),
            coords={"unit": np.arange(values.shape[0]), **coords},
            name="nss",
            attrs={"layer": layer, "backbone": meta.get("backbone", ""),
                   "weights_id": meta.get("weights_id", ""), "drop_first": int(drop_first)},
        )
    return out


def save_associations(assoc: dict[str, xr.DataArray], path: str | Path) -> Path:
    """Write ``{layer: DataArray}`` as one Zarr store with a group per layer (``assoc/<layer>``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    for i, (layer, da) in enumerate(assoc.items()):
        ds = da.to_dataset(name="nss")
        ds.attrs["layers"] = list(assoc)
        ds.to_zarr(tmp, group=f"assoc/{layer}", mode="w" if i == 0 else "a", consolidated=False)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)  # atomic: an interrupted write never leaves a half store under `path`
    return path


def load_associations(
    path: str | Path, layers: Iterable[str] | None = None
) -> dict[str, xr.DataArray]:
    """Read what :func:`save_associations` wrote."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise DataError(path, "association store not found")
    group = zarr.open_group(str(path), mode="r")
    names = list(layers) if layers is not None else sorted(group["assoc"].group_keys())
    out = {}
    for layer in names:
        ds = xr.open_zarr(path, group=f"assoc/{layer}", consolidated=False)
        da = ds["nss"].load()
        # Zarr v3 gives numpy StringDType; make the labels plain str arrays
        out[layer] = da.assign_coords(
            {c: ("region", np.array(da[c].values.tolist(), dtype=str))
             for c in ("image", "category")}
        )
    if layers is None:
        first = xr.open_zarr(path, group=f"assoc/{names[0]}", consolidated=False)
        order = first.attrs.get("layers", names)
        out = {k: out[k] for k in order if k in out}
    return out
