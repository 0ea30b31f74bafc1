"""Stage ``mlnet-dissect``: what ML-Net learned — its 64 encoding units dissected with He et al.'s
Eq. 1 beside the trunk's own units, its learned prior beside the centre bias, and its encoding
units on the pop-out arrays.

* **Encoding units** (the ReLU of the 3×3 encoding convolution, ``encoding``, 60×80 maps): cached
  for the held-out images (``work/act/mlnet.zarr``, :mod:`dissect.cache` through
  :meth:`MLNet.as_backbone`), associated with the category-labelled regions (Eq. 1,
  :func:`dissect.association.associate` → ``work/mlnet_dissect/assoc.zarr``) and summarised by the
  ``statistics`` stage's category statistics (top-k mean and count above T, each against the
  label-permutation null, image-bootstrap intervals; :func:`dissect.statistics.category_statistics`
  with the ``stats`` parameters) → ``results/tables/mlnet/encoding_statistics`` (tidy) and the
  Table 2 pivots of the trunk's layers with ``mlnet encoding`` as the last row
  (``encoding_vs_trunk_<stat>``), and per category the encoding units beside the trunk's best
  layer (``encoding_vs_best_layer_<stat>``, :func:`dissect.statistics.compare_with_layers`).
* **Learned prior**: ``up(1 + W)`` mapped onto an OSIE image's pixels (as the output map is,
  :func:`~dissect.models.mlnet.unletterbox`) beside the ``baselines`` stage's centre bias on the
  same image, and their correlation → ``results/figures/mlnet/learned_prior.png`` and
  ``results/tables/mlnet/learned_prior``.
* **Pop-out** (Table 5's layout): per array, the mean NMM (Eq. 4) of the top-k encoding units
  (:func:`dissect.popout_scoring.inner_unit_nmm`) → ``results/tables/mlnet/table5_popout_encoding``
  with the pretrained trunk's Table 5 rows above it. ML-Net's output map is scored with the
  other models in Table 4 by ``popout-readouts``.

The units' maps cover the whole image only when the image has the canvas's aspect (then the
letterbox is a plain resize); OSIE's 600×800 images and the pop-out arrays have the 480×640
canvas's, and any other image is refused with its id.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.mlnet_dissect")

LAYER = "encoding"
ROW = "mlnet encoding"


def encoding_store(params: Params):
    return common.work(params, "act", "mlnet.zarr")


def assoc_path(params: Params):
    return common.work(params, "mlnet_dissect", "assoc.zarr")


def check_aspect(sizes: dict[str, tuple[int, int]], canvas: tuple[int, int], what: str) -> None:
    """Every ``(H, W)`` must have the canvas's aspect (``H · cols == W · rows``): the encoding
    maps then cover the whole image. Otherwise :class:`DataError` naming the first image."""
    from dissect.errors import DataError

    rows, cols = canvas
    bad = {i: s for i, s in sizes.items() if s[0] * cols != s[1] * rows}
    if bad:
        i, s = next(iter(bad.items()))
        raise DataError(i, f"{what}: a {s[0]}×{s[1]} image does not have ML-Net's {rows}×{cols} "
                           f"canvas aspect ({len(bad)} such image(s)): its letterbox pads, and "
                           "the unit maps would not cover the image")


def run_mlnet_dissect(params: Params) -> pd.DataFrame:
    from dissect.association import associate, save_associations
    from dissect.data.popout import load_set
    from dissect.figures import prior_figure, save_figure
    from dissect.models.base import load_model
    from dissect.models.baselines import load_centre_bias
    from dissect.models.mlnet import letterbox_box, unletterbox
    from dissect.popout_scoring import inner_unit_nmm, layer_summary
    from dissect.stages.associate import unit_means_table
    from dissect.stages.baselines import centre_bias_path
    from dissect.stages.extract import extract_store
    from dissect.stages.mlnet import model_path
    from dissect.stages.popout import arrays_dir
    from dissect.stages.statistics import statistics_kwargs
    from dissect.statistics import category_statistics, compare_with_layers
    from dissect.tables import pivot_layers, stats_caption, write_table

    kw = statistics_kwargs(params)
    top = f"top{kw['k']}_mean"
    drop = bool(params["data"]["drop_first"])
    recorded = {"stats": params["stats"], "data.drop_first": drop,
                "extract": params["extract"], "device": params.get("device", "auto")}
    with stage_record(params.work, "mlnet-dissect", recorded) as rec:
        dataset, regions = common.inputs(params)
        heldout = common.ids_of(params, "heldout")
        bb = common.backbone(params)
        dev = common.device(params)
        model = load_model("mlnet", checkpoint=model_path(params), backbone=bb, device=dev)
        net = model.module
        canvas = net.input_size
        check_aspect({i: tuple(dataset[i].size) for i in heldout}, canvas, "mlnet-dissect")

        # 1. the encoding units on the held-out images, Eq. 1 and the category statistics
        unit_bb = net.as_backbone([LAYER])
        store = extract_store(params, dataset.subset(heldout), unit_bb, [LAYER],
                              encoding_store(params), device=dev)
        with common.scheduler(params) as client:
            assoc = associate(store, dataset, regions, image_ids=heldout, drop_first=drop,
                              chunk_images=int(params["dask"]["chunk_images"]),
                              scheduler=client, progress=common.progress(params),
                              desc="associate ML-Net encoding")
        out_assoc = assoc_path(params)
        save_associations(assoc, out_assoc)
        unit_means_table(assoc).to_csv(out_assoc.with_name(f"{out_assoc.stem}_unit_means.csv"),
                                       index=False)
        stats = category_statistics(assoc, **kw)
        stats.insert(0, "model", "mlnet")
        trunk = pd.read_csv(common.results(params, "tables", "statistics",
                                           "category_statistics.csv"))
        trunk = trunk[trunk["model"] == "pt"]
        both = pd.concat([trunk, stats.assign(layer=ROW)], ignore_index=True)

        # 2. the learned prior on an image, beside the centre bias
        size = tuple(dataset[heldout[0]].size)
        prior = unletterbox(net.prior_map(), letterbox_box(size, canvas))
        cb = load_centre_bias(centre_bias_path(params))
        centre = np.exp(cb.log_density(size))
        cc = float(np.corrcoef(prior.ravel(), centre.ravel())[0, 1])
        grid = net.prior.weight.detach().cpu().numpy() + 1.0
        prior_table = pd.DataFrame([{
            "image_size": f"{size[0]}x{size[1]}", "prior_grid": f"{grid.shape[0]}x{grid.shape[1]}",
            "prior_min": float(grid.min()), "prior_max": float(grid.max()),
            "prior_centre_to_border": float(_centre_to_border(prior)),
            "centre_bias_centre_to_border": float(_centre_to_border(centre)),
            "cc_with_centre_bias": cc}])

        # 3. the encoding units on the pop-out arrays (Table 5's layout)
        arrays = load_set(arrays_dir(params))
        check_aspect({a.id: tuple(a.mask.shape) for a in arrays}, canvas, "pop-out arrays")
        inner, _ = inner_unit_nmm(unit_bb, [LAYER], arrays, kw["k"], "mlnet",
                                  progress=common.progress(params))
        table5 = pd.read_csv(common.results(params, "tables", "popout", "table5_popout_layers.csv"))
        table5 = pd.concat([table5.assign(model="pt"),
                            layer_summary(inner).assign(layer=ROW)], ignore_index=True)
        table5 = table5[["model", "layer", *[c for c in table5.columns
                                            if c not in ("model", "layer")]]]

        with common.replacing(common.results(params, "tables", "mlnet")) as out:
            write_table(stats, out / "encoding_statistics")
            for stat in (top, "count_above_T"):
                write_table(compare_with_layers(both, ROW, stat),
                            out / f"encoding_vs_best_layer_{stat}",
                            caption=f"{stat} per category: ML-Net's encoding units beside the "
                                    "trunk's best layer for that category (value and excess "
                                    "over the permutation null; higher = the encoding units' "
                                    "value is above every trunk layer's).")
            for stat in (top, "count_above_T"):
                for cells, suffix in (("value", ""), ("excess", "_excess")):
                    caption = stats_caption(both, stat, cells=cells, n_null=kw["n_null"],
                                            n_boot=kw["n_boot"], tidy="encoding_statistics.csv")
                    write_table(pivot_layers(both, stat, cells=cells).reset_index(),
                                out / f"encoding_vs_trunk_{stat}{suffix}",
                                caption=f"The pretrained trunk's layers (Table 2) and ML-Net's "
                                        f"64 encoding units (last row), held-out images. "
                                        f"{caption}")
            write_table(prior_table, out / "learned_prior",
                        caption="ML-Net's learned prior up(1 + W) on an OSIE image and the "
                                "centre bias on the same image; centre_to_border: the mean "
                                "over the central ninth of the image over the mean over its "
                                "outer border band (a tenth of each side).")
            write_table(table5, out / "table5_popout_encoding",
                        caption=f"Pop-out arrays: mean over arrays of the top-{kw['k']} units' "
                                "NMM (Eq. 4), the pretrained trunk's layers (the popout "
                                "stage's Table 5) and ML-Net's encoding units.")
        inner.to_csv(common.work(params, "mlnet_dissect", "popout_units.csv"), index=False)
        with common.replacing(common.results(params, "figures", "mlnet")) as fig_out:
            save_figure(prior_figure(prior, centre, cc=cc), fig_out / "learned_prior.png")
        rec.update(n_images=len(heldout), n_arrays=len(arrays), units=int(stats["n_units"].iloc[0]),
                   weights_id=unit_bb.weights_id, cc_prior_centre_bias=cc)
    return stats


def _centre_to_border(amap: np.ndarray) -> float:
    """Mean over the central ninth of a map over the mean over its border band (a tenth of the
    height / width on each side): > 1 favours the centre."""
    h, w = amap.shape
    centre = amap[h // 3: h - h // 3, w // 3: w - w // 3].mean()
    bh, bw = max(1, h // 10), max(1, w // 10)
    band = np.ones_like(amap, dtype=bool)
    band[bh:h - bh, bw:w - bw] = False
    return float(centre / amap[band].mean())
