"""``dissect site``: the unit browser (``results/site/``) and ``results/report.html``.

Reads what earlier stages wrote — the association arrays (Eq. 1) and activation stores of the
pretrained trunk, the fine-tuned readouts, the implicit-saliency gradient units and ML-Net's
encoding, the pop-out unit tables, the scorecard — and builds the static site with
:func:`dissect.site.build_site`. Committed: ``results/site/index.html``, ``results/site/assets``
and ``results/report.html``; ``results/site/pages`` (unit, layer and model pages with OSIE
thumbnails) is a DVC-cached output rebuilt by ``make repro``, never committed (OSIE images are
not committed, and it is ~50 MB).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.site")

#: figures each model's page shows (glob patterns under results/figures)
MODEL_FIGURES = {
    "deepgaze": ["deepgaze/*.png"],
    "mlnet": ["mlnet/*.png"],
    "implicit_saliency": ["implicit/*.png"],
    "gradcam": ["implicit/*.png"],
}
FAMILY_TEXT = {
    "deepgaze": "DeepGaze I: a linear readout of the pretrained trunk's units, blurred, plus a "
                "centre-bias prior, trained as a density by log-likelihood.",
    "mlnet": "ML-Net: multi-level features of the trunk, an encoding of 64 saliency maps and a "
             "learned prior.",
    "implicit_saliency": "Implicit saliency: where the classifier's class gradients conflict "
                         "(mean and variance of the gradients over the classes).",
    "gradcam": "Grad-CAM at the trunk's last convolutional layer.",
    "centre_bias": "The centre bias: a KDE of the training images' fixations.",
    "gold_standard": "The inter-observer gold standard: leave-one-observer-out KDE.",
}


def _reader(store: Path, layer: str):
    def read(images, units) -> np.ndarray:
        from dissect.cache import open_activations

        arr = open_activations(store, layer)
        if "unit" in arr.coords:
            arr = arr.sel(image=list(images), unit=list(units))
        else:  # units are positions
            arr = arr.sel(image=list(images)).isel(unit=list(units))
        return np.asarray(arr.values, dtype=np.float32)
    return read


def _popout_reader(trunk, layer: str, arrays: list):
    """The layer's unit maps on the pop-out arrays, (arrays, units, h, w), computed on first
    use (``trunk()`` builds the network) and kept."""
    kept: dict[str, np.ndarray] = {}

    def read() -> np.ndarray:
        if "maps" not in kept:
            import torch

            from dissect.capture import LayerCapture

            bb = trunk()
            with LayerCapture(bb, [layer]) as cap, torch.no_grad():
                kept["maps"] = np.stack([cap.attribute(bb.preprocess(a.image))[layer][0]
                                         .float().cpu().numpy() for a in arrays])
        return kept["maps"]
    return read


def site_layers(params: Params, arrays: list) -> list:
    """Every dissected layer whose association array exists, as :class:`SiteLayer`; the
    pretrained trunk's and the first seed's fine-tuned layers with their maps on the pop-out
    ``arrays`` (ML-Net's encoding: its pop-out table; the gradient units: none, ~5 s an
    array)."""
    from dissect.association import load_associations
    from dissect.site import SiteLayer
    from dissect.stages.implicit import gradient_store
    from dissect.stages.mlnet_dissect import assoc_path, encoding_store

    s = params["site"]
    trunk = str(params["backbone"]["name"])
    layers = []

    def popout_rows(table, model: str, layer: str):
        if table is None:
            return None
        return table[(table["model"].astype(str) == model) & (table["layer"] == layer)]

    from functools import cache

    base = cache(lambda: common.backbone(params))

    def finetuned(model: str, seed: int):
        from dissect.models.base import load_model
        from dissect.task_compare import finetuned_trunk

        readout = load_model("readout", checkpoint=common.readout_path(params, model, seed),
                             backbone=base()).readout
        return finetuned_trunk(readout, model)

    pt = common.assoc_store(params, "pt")
    for layer, assoc in load_associations(pt).items():
        layers.append(SiteLayer(
            model="pt", model_label=f"{trunk} (ImageNet, pretrained)", group="Pretrained trunk",
            layer=layer, assoc=assoc, maps=_reader(common.act_store(params, "pt"), layer),
            popout_maps=_popout_reader(base, layer, arrays)))
    for seed in common.seeds(params):
        for model in common.model_names(params)[1:]:
            if common.trunk_model(model) == "pt":
                continue  # setup I: the pretrained trunk's units, listed above
            path = common.assoc_store(params, model, seed)
            if not path.exists():
                continue
            label = common.model_label(model)
            for layer, assoc in load_associations(path).items():
                layers.append(SiteLayer(
                    model=f"{model}_s{seed}",
                    model_label=f"readout {label}, seed {seed} (fine-tuned)",
                    group="Fine-tuned trunks (setup II)", layer=layer, assoc=assoc,
                    maps=_reader(common.act_store(params, model, seed), layer),
                    unit_pages=seed in s["unit_page_seeds"], before=("pt", layer),
                    popout_maps=(_popout_reader(lambda m=model, sd=seed: finetuned(m, sd),
                                                layer, arrays)
                                 if seed in s["unit_page_seeds"] else None)))
    grad = common.work(params, "implicit", "assoc.zarr")
    if grad.exists():
        for layer, assoc in load_associations(grad).items():
            layers.append(SiteLayer(
                model="implicit", model_label="implicit saliency: class-gradient means",
                group="Gradient units (implicit saliency)", layer=layer, assoc=assoc,
                maps=_reader(gradient_store(params), layer)))
    enc = assoc_path(params)
    if Path(enc).exists():
        mpop = common.work(params, "mlnet_dissect", "popout_units.csv")
        for layer, assoc in load_associations(enc).items():
            layers.append(SiteLayer(
                model="mlnet", model_label="ML-Net encoding", group="ML-Net", layer=layer,
                assoc=assoc, maps=_reader(encoding_store(params), layer),
                popout=popout_rows(pd.read_csv(mpop) if mpop.is_file() else None, "mlnet",
                                   layer)))
    return layers


def _links(params: Params, name: str, known: list[tuple[str, str]]
           ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(units, layers) a model's page links: DeepGaze I's largest readout weights (their
    pretrained units get pages), the dissected layers of ML-Net, implicit saliency and the
    fine-tuned readouts."""
    units: list[tuple[str, str]] = []
    if name == "deepgaze":
        picked = common.results(params, "tables", "deepgaze", "picked_units.csv")
        if picked.is_file():
            for r in pd.read_csv(picked).itertuples(index=False):
                units.append((f"pt/{r.layer}/{int(r.unit)}",
                              f"rank {int(r.rank)} by |readout weight| ({r.weight:.3f})"))
    model = {"mlnet": "mlnet", "implicit_saliency": "implicit"}.get(name)
    if name.startswith("readout_"):
        parts = name[len("readout_"):].rsplit("_", 1)  # "readout_k6_s0" → "k6", "s0"
        if len(parts) != 2 or not parts[1].startswith("s"):
            from dissect.errors import DataError

            raise DataError("results/tables/evaluate/summary.csv",
                            f"model {name!r}: a readout's name must be readout_<k>_s<seed>")
        k, seed = parts
        model = "pt" if common.trunk_model(k) == "pt" else f"{k}_{seed}"
    layers = [key for key in known if key[0] == model] if model else []
    if model == "pt":
        layers = layers[-1:]  # setup I: the frozen trunk's last layer feeds the readout
    return units, layers


def model_pages(params: Params, dataset, known: list[tuple[str, str]]) -> tuple[list, object]:
    """A :class:`ModelPage` per model of the scorecard, and the fixation density (the gold
    standard's map) the pages show beside each model's map; ``known``: the dissected
    (model, layer) pairs the pages may link."""
    from dissect.models.base import StimulusImage
    from dissect.site import ModelPage
    from dissect.stages.baselines import load_baselines
    from dissect.stages.evaluate import build_models

    summary = pd.read_csv(common.results(params, "tables", "evaluate", "summary.csv"))
    cb, gold = load_baselines(params, dataset)
    models, _ = build_models(params, dataset, cb, gold, fit=False)
    figures = params.results / "figures"

    def predictor(model):
        return lambda i: model.saliency_map(StimulusImage(i, dataset.load_image(i)))

    pages = []
    for name in summary["model"].drop_duplicates():
        rows = summary[summary["model"] == name]
        figs = sorted(p for pat in MODEL_FIGURES.get(name, []) for p in figures.glob(pat))
        if name.startswith("readout_"):
            figs = sorted(figures.glob("paper/training_curves.png"))
        units, layers = _links(params, name, known)
        pages.append(ModelPage(
            name=name, label=name.replace("_", " "),
            scores=rows[["metric", "value", "ci_low", "ci_high", "n_images"]],
            predict=predictor(models[name]) if name in models else None, figures=figs,
            text=FAMILY_TEXT.get(name, ""), units=units, layers=layers))
    return pages, predictor(gold)


def run_site(params: Params):
    from dissect.data.popout import load_set
    from dissect.report_html import write_report_html
    from dissect.site import SiteOptions, build_site
    from dissect.stages.popout import arrays_dir

    s, st = params["site"], params["stats"]
    recorded = {"site": s, "stats.threshold": st["threshold"], "stats.n_null": st["n_null"],
                "stats.seed": st["seed"], "stats.null_type": st["null_type"]}
    # not work/provenance: `report` depends on that folder and runs before this stage
    with stage_record(common.work(params, "site"), "site", recorded) as rec:
        dataset, regions = common.inputs(params)
        heldout = common.ids_of(params, "heldout")
        report = write_report_html(common.results(params, "report.md"),
                                   common.results(params, "report.html"),
                                   back_link="site/index.html")
        arrays = list(load_set(arrays_dir(params)))
        layers = site_layers(params, arrays)
        pages, density = model_pages(params, dataset,
                                     [(ly.model, ly.layer) for ly in layers])
        opts = SiteOptions(
            top_k=int(s["top_k"]), n_images=int(s["n_images"]),
            min_regions=int(s["min_regions"]),
            thumb_width=int(s["thumb_width"]), threshold=float(st["threshold"]),
            n_null=int(st["n_null"]), seed=int(st["seed"]), null=str(st["null_type"]),
            drop_first=bool(params["data"]["drop_first"]), extra_units=list(s["units"]),
            example_images=heldout[: int(s["example_images"])])
        out = common.results(params, "site")
        with common.replacing(out) as tmp:
            summary = build_site(tmp, layers, dataset=dataset, regions=regions, opts=opts,
                                 models=pages, report=report.parent / "report.html",
                                 popout_arrays=arrays, density=density,
                                 progress=common.progress(params))
        # the report is linked from the temporary folder's position, which is the final one
        rec["n_layers"], rec["n_unit_pages"] = summary.n_layers, summary.n_unit_pages
        rec["n_files"], rec["megabytes"] = summary.n_files, round(summary.n_bytes / 1e6, 1)
    log.info("site: %d layers, %d unit pages, %d model pages, %d files, %.1f MB; open %s",
             summary.n_layers, summary.n_unit_pages, summary.n_model_pages, summary.n_files,
             summary.n_bytes / 1e6, out / "index.html")
    return summary
