"""What several stages share: inputs from params, the Dask scheduler, stage paths."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from dissect.config import Params
from dissect.errors import DataError

log = logging.getLogger("dissect")

OSIE_HINT = (
    "OSIE not found at {path}. Get it from the authors' public repository "
    "(NUS-VIP/predicting-human-gaze-beyond-pixels on GitHub: data/stimuli and "
    "data/eye/fixations.mat) and point `data.osie` in pipelines/params.yaml at it."
)


def osie_available(params: Params) -> bool:
    root = params.path(params["data"]["osie"])
    return (root / "data" / "eye" / "fixations.mat").is_file()


def require_osie(params: Params) -> None:
    if not osie_available(params):
        raise DataError(params.path(params["data"]["osie"]),
                        OSIE_HINT.format(path=params.path(params["data"]["osie"])))


@lru_cache(maxsize=4)
def _dataset(root: str, regions_root: str):
    from dissect.data import load_osie, load_regions

    ds = load_osie(root)
    return ds, load_regions(regions_root, dataset=ds)


def inputs(params: Params):
    """(dataset, regions) of the configured OSIE copy."""
    require_osie(params)
    d = params["data"]
    return _dataset(str(params.path(d["osie"])), str(params.path(d["regions"])))


def split(params: Params):
    """The committed seeded split (created by ``dissect prepare``)."""
    from dissect.data import load_split

    path = params.path(params["data"]["split_file"])
    if not path.is_file():
        raise DataError(path, "split file missing: run `dissect prepare` first")
    return load_split(path)


def ids_of(params: Params, which: str) -> list[str]:
    """Image ids of one split part ("train" or "heldout"), limited by ``data.max_images``."""
    table = split(params)
    ids = [str(i) for i in table.loc[table["split"] == which, "image"]]
    limit = params["data"].get("max_images")
    if limit:
        ids = ids[: int(limit)]
    return ids


def backbone(params: Params):
    from dissect.backbones import load_backbone
    from dissect.errors import WeightsError

    b = params["backbone"]
    try:
        return load_backbone(b["name"], weights=b["weights"],
                             checkpoint=params.path(b.get("checkpoint")))
    except WeightsError as exc:
        raise WeightsError(f"{exc}\nIn the pipeline, set `backbone.checkpoint` in "
                           f"{params.base / 'params.yaml'} to the file's path.") from exc


def work(params: Params, *parts: str) -> Path:
    p = params.work.joinpath(*parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def results(params: Params, *parts: str) -> Path:
    p = params.results.joinpath(*parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def progress(params: Params) -> bool:
    return bool(params.get("progress", True))


@contextmanager
def scheduler(params: Params):
    """Yield the ``scheduler=`` value for dask.compute: None (local threads) or a Client."""
    address = (params.get("dask") or {}).get("scheduler")
    if not address:
        yield None
        return
    from distributed import Client

    with Client(address) as client:
        log.info("dask: using the cluster at %s (%s)", address, client)
        yield client


def model_names(params: Params) -> list[str]:
    """Models analysed: the pretrained trunk 'pt' and one readout per k ('k0', 'k1', …, 'kall')."""
    return ["pt"] + [f"k{k}" for k in params["train"]["ks"]]


def trunk_model(model: str) -> str:
    """The model whose trunk a model uses: setup I ('k0') keeps the pretrained trunk 'pt', so its
    units are the pretrained ones (cached once)."""
    return "pt" if model == "k0" else model


def read_json(params: Params, *parts: str) -> dict:
    import json

    path = params.work.joinpath(*parts)
    if not path.is_file():
        raise DataError(path, "missing: run the stage that writes it first")
    return json.loads(path.read_text())


def act_store(params: Params, model: str) -> Path:
    """Activation cache of a model's trunk: pretrained in ``act/pt.zarr``, fine-tuned ones in
    ``act/finetuned/<model>.zarr``."""
    model = trunk_model(model)
    if model == "pt":
        return work(params, "act", "pt.zarr")
    return work(params, "act", "finetuned", f"{model}.zarr")


def assoc_store(params: Params, model: str) -> Path:
    """Association store of a model's trunk (setup I shares the pretrained one)."""
    return work(params, "assoc", f"{trunk_model(model)}.zarr")


if __name__ == "__main__":  # `python -m dissect.stages.common --check-osie` (used by make repro)
    import sys

    from dissect.config import load_params

    _params = load_params()
    if osie_available(_params):
        sys.exit(0)
    print(OSIE_HINT.format(path=_params.path(_params["data"]["osie"]))
          + " Running the pop-out stages only (they need no OSIE).", file=sys.stderr)
    sys.exit(1)
