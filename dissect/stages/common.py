"""What several stages share: inputs from params, the Dask scheduler, stage paths."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
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


def _source(params: Params) -> Path | str:
    """The parameter file, for error messages (a Params built in a test may have none)."""
    base = getattr(params, "base", None)
    return Path(base) / params.file if base is not None else params.file


def backbone(params: Params):
    """The backbone of ``backbone``: a built-in one (:func:`dissect.backbones.load_backbone`) or,
    with ``name: custom``, the network of ``backbone.factory`` with the module paths of
    ``backbone.layers`` hooked (:func:`dissect.backbones.load_custom_backbone`). A factory or
    layer problem is a :class:`~dissect.params_schema.ParamsError` naming the key."""
    from dissect.backbone_spec import CUSTOM
    from dissect.backbones import load_backbone, load_custom_backbone
    from dissect.errors import WeightsError
    from dissect.params_schema import ParamsError

    b = params["backbone"]
    # read for every backbone: null unless name is custom (the schema refuses anything else)
    factory, mean, std = b.get("factory"), b.get("mean"), b.get("std")
    try:
        if b["name"] == CUSTOM:
            layers = b["layers"]
            layers = ({str(k): str(v) for k, v in layers.items()} if isinstance(layers, dict)
                      else [str(n) for n in layers])
            bb = load_custom_backbone(factory, layers,
                                      checkpoint=params.path(b.get("checkpoint")),
                                      mean=None if mean is None else [float(m) for m in mean],
                                      std=None if std is None else [float(s) for s in std])
        else:
            bb = load_backbone(b["name"], weights=b["weights"],
                               checkpoint=params.path(b.get("checkpoint")))
    except WeightsError as exc:
        raise WeightsError(f"{exc}\nIn the pipeline, set `backbone.checkpoint` in "
                           f"{_source(params)} to the file's path.") from exc
    except DataError as exc:
        if exc.source in ("backbone.factory", "backbone.layers"):
            raise ParamsError(_source(params), [(exc.source, exc.problem)]) from exc
        raise
    unknown = [name for name in b["layers"] if name not in bb.layers]
    if unknown:
        raise DataError(_source(params),
                        f"backbone.layers: {b['name']} has no layer(s) {unknown}; its layers: "
                        f"{list(bb.layers)}")
    return bb


def layer_names(params: Params) -> list[str]:
    """Names of the analysed layers, shallow to deep: ``backbone.layers`` as a list, or the
    names (keys) of its mapping form {layer name: module path} (custom backbones)."""
    return [str(n) for n in params["backbone"]["layers"]]


def device(params: Params, *, float64: bool = False):
    """The :class:`torch.device` of the ``device`` parameter on this machine
    (:func:`dissect.device.resolve_device`: ``auto`` = CUDA when available, else CPU; absent in a
    hand-built Params = ``auto``). A device this machine lacks is a
    :class:`~dissect.params_schema.ParamsError` naming ``device`` and the available ones.
    ``float64``: the stage computes in float64 on the device (NSS losses, metrics), which MPS
    lacks, so ``mps`` is refused up front instead of failing midway."""
    from dissect.device import DeviceError, resolve_device
    from dissect.params_schema import ParamsError

    name = params.get("device", "auto")
    try:
        dev = resolve_device(name)
    except DeviceError as exc:
        raise ParamsError(_source(params), [("device", exc.problem)]) from None
    if float64 and dev.type == "mps":
        raise ParamsError(_source(params), [("device", "'mps' cannot run this stage: it "
                                             "computes in float64, which MPS lacks; use cpu or "
                                             "cuda")])
    return dev


def work(params: Params, *parts: str) -> Path:
    p = params.work.joinpath(*parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def results(params: Params, *parts: str) -> Path:
    p = params.results.joinpath(*parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Write an output (folder or file) at a temporary sibling and move it into place at the end.

    Yields the temporary path; on success it replaces ``path`` (a folder by two renames, a file
    by one atomic ``os.replace``); on error the temporary is removed and ``path`` is left as it
    was. With ``persist: true`` outs in ``dvc.yaml`` (DVC then does not delete them when a stage
    starts), an interrupted run never deletes or half-writes committed results, and a folder
    never keeps files from an earlier run with other parameters.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary keeps the suffix: writers that check it (save_figure: .png) accept it
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    old = path.with_name(f".{path.stem}.old-{os.getpid()}{path.suffix}")
    for stale in (tmp, old):
        _remove(stale)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists():
        raise DataError(path, "the stage wrote nothing for this output")
    if tmp.is_dir() and path.exists():
        path.rename(old)  # a folder cannot be swapped in one rename
        tmp.rename(path)
        _remove(old)
    else:
        os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


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


def model_label(model: str) -> str:
    """Display name of a model: 'pt', 'k0' … 'k6', and 'all' for the readout with every trunk
    stage tuned (``kall``): one name in every table, figure and the report."""
    return "all" if model == "kall" else model


def sp_model(params: Params) -> str:
    """The readout used as "sp" (saliency) in the task comparison (He et al. §8): the one with as
    many tuned trunk stages as the scene model (``scene.tuned_stages``), which must be trained."""
    n = params["scene"]["tuned_stages"]
    name = f"k{n}"
    if name not in model_names(params):
        raise DataError(params.base / params.file,
                        f"scene.tuned_stages = {n} needs the readout {name}, which train.ks "
                        f"{list(params['train']['ks'])} does not train")
    return name


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


def _seed_list(params: Params, section: str) -> list[int]:
    """``<section>.seeds`` checked: a non-empty list of distinct non-negative integers."""
    where = params.base / params.file
    raw = params[section].get("seeds")
    if not isinstance(raw, list | tuple) or not raw:
        raise DataError(where, f"{section}.seeds must be a non-empty list of integers, "
                               f"got {raw!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in raw):
        raise DataError(where, f"{section}.seeds must hold non-negative integers, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise DataError(where, f"{section}.seeds lists a seed twice: {raw!r}")
    return [int(s) for s in raw]


def seeds(params: Params) -> list[int]:
    """Training seeds (``train.seeds``): every readout is trained once per seed."""
    return _seed_list(params, "train")


def scene_seeds(params: Params) -> list[int]:
    """Scene-model seeds (``scene.seeds``), paired by position with ``train.seeds``: the i-th
    scene model (sr) is compared with the readouts of the i-th training seed (sp)."""
    sc, tr = _seed_list(params, "scene"), seeds(params)
    if len(sc) != len(tr):
        raise DataError(params.base / params.file,
                        f"scene.seeds {sc} and train.seeds {tr} must have the same length: "
                        "Table 7 pairs the i-th scene model with the i-th training seed")
    return sc


def seed_label(seed: int) -> str:
    """Folder and column label of a training seed: ``s0``, ``s1``, …"""
    return f"s{int(seed)}"


def seeded(model: str) -> bool:
    """Whether a model's units depend on the training seed (a fine-tuned trunk: k ≥ 1)."""
    return trunk_model(model) != "pt"


def readout_path(params: Params, model: str, seed: int) -> Path:
    """Checkpoint of the readout ``model`` ('k0' … 'kall') trained with ``seed``:
    ``readouts/s<seed>/<model>/model.pt``."""
    return work(params, "readouts", seed_label(seed), model, "model.pt")


def _seed_part(model: str, seed: int | None) -> list[str]:
    if not seeded(model):
        return []
    if seed is None:
        raise ValueError(f"the units of {model} depend on the training seed: pass seed=")
    return [seed_label(seed)]


def act_store(params: Params, model: str, seed: int | None = None) -> Path:
    """Activation cache of a model's trunk: pretrained in ``act/pt.zarr`` (setup I shares it,
    for every seed), fine-tuned ones in ``act/finetuned/s<seed>/<model>.zarr``."""
    model = trunk_model(model)
    if model == "pt":
        return work(params, "act", "pt.zarr")
    return work(params, "act", "finetuned", *_seed_part(model, seed), f"{model}.zarr")


def assoc_store(params: Params, model: str, seed: int | None = None) -> Path:
    """Association store of a model's trunk: ``assoc/pt.zarr`` (pretrained, also setup I) or
    ``assoc/s<seed>/<model>.zarr``."""
    return work(params, "assoc", *_seed_part(model, seed), f"{trunk_model(model)}.zarr")


def scene_dir(params: Params, seed: int) -> Path:
    """Scene-stage outputs of one scene seed: ``scene/s<seed>/`` (model, sr associations); a
    pure path (the scene stage creates it)."""
    return params.work / "scene" / seed_label(seed)


if __name__ == "__main__":  # `python -m dissect.stages.common --check-osie [PARAMS]` (make repro)
    import sys

    from dissect.config import load_params

    _params = load_params(sys.argv[2] if len(sys.argv) > 2 else None)
    if osie_available(_params):
        sys.exit(0)
    print(OSIE_HINT.format(path=_params.path(_params["data"]["osie"]))
          + " Running the pop-out stages only (they need no OSIE).", file=sys.stderr)
    sys.exit(1)
