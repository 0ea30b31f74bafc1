"""Stages ``popout-arrays``, ``popout`` and ``popout-readouts``: pop-out search arrays (He et al.
§7), scored with NMM (Eq. 4) by :mod:`dissect.popout_scoring`.

``popout-arrays`` renders the default seeded set (bit-identical on every run) with exact target
masks. ``popout`` scores the classical models (Itti–Koch, GBVS, BMS, spectral residual,
fine-grained; Table 4) and the pretrained trunk's units (Table 5: per layer the mean over arrays
of the top-k units' NMM). ``popout-readouts`` adds the saliency readouts (setup I, setup II for
each k), DeepGaze I and ML-Net to Table 4 and scores the last trunk layer of each fine-tuned
readout (Table 6). Every results output is written through :func:`common.replacing`.
"""

from __future__ import annotations

import logging

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.popout")


def arrays_dir(params: Params):
    return common.work(params, "popout", "arrays", "manifest.csv").parent


def run_popout_arrays(params: Params) -> None:
    from dissect.data.popout import default_set, write_set

    p = params["popout"]
    recorded = {"popout.n_per_dimension": p["n_per_dimension"], "popout.seed": p["seed"]}
    with stage_record(params.work, "popout-arrays", recorded) as rec:
        arrays = default_set(int(p["n_per_dimension"]), int(p["seed"]))
        manifest = write_set(arrays, arrays_dir(params))
        with common.replacing(common.results(params, "tables", "popout_manifest.csv")) as out:
            pd.read_csv(manifest).to_csv(out, index=False)
        rec["n_arrays"] = len(arrays)
        log.info("%d arrays written to %s", len(arrays), manifest.parent)


def _write_model_tables(per_array: pd.DataFrame, out) -> None:
    from dissect.popout_scoring import model_tables
    from dissect.tables import write_table

    t4, by_dim = model_tables(per_array)
    write_table(per_array, out / "popout_nmm")
    write_table(t4, out / "table4_popout_models")
    write_table(by_dim, out / "table4_popout_excess_by_dimension")


def run_popout(params: Params) -> None:
    """Classical models and the pretrained trunk's units (needs no OSIE)."""
    from dissect.data.popout import load_set
    from dissect.models.base import load_model
    from dissect.popout_scoring import inner_unit_nmm, layer_summary, score_model
    from dissect.tables import write_table

    p, k_top = params["popout"], int(params["stats"]["top_k"])
    layers = list(params["backbone"]["layers"])
    with stage_record(params.work, "popout", {"popout": p, "top_k": k_top}) as rec:
        arrays = load_set(arrays_dir(params))
        per_array = pd.concat(
            [score_model(name, "classical", arrays, load_model(name).saliency_map,
                         progress=common.progress(params)) for name in p["models"]],
            ignore_index=True)
        inner, _ = inner_unit_nmm(common.backbone(params), layers, arrays, k_top, "pt",
                                  progress=common.progress(params))
        with common.replacing(common.results(params, "tables", "popout")) as out:
            _write_model_tables(per_array, out)
            write_table(layer_summary(inner).drop(columns="model"),
                        out / "table5_popout_layers")
        inner.to_csv(common.work(params, "popout", "inner_units.csv"), index=False)
        rec["n_arrays"] = len(arrays)


def deepgaze_rows(params: Params, base, arrays) -> list[pd.DataFrame]:
    """DeepGaze I (the ``deepgaze`` stage's model) on the arrays, Table 4's deep rows: with a
    uniform prior (``deepgaze_uniform``: the arrays have no centre bias of their own) and with
    the OSIE centre bias of the ``baselines`` stage (``deepgaze_centre``). Scored on its
    density (``saliency_map``), like the other models' maps."""
    from dissect.models.base import load_model
    from dissect.models.baselines import load_centre_bias
    from dissect.popout_scoring import score_model
    from dissect.stages.baselines import centre_bias_path
    from dissect.stages.deepgaze import model_path

    cb = load_centre_bias(centre_bias_path(params))
    out = []
    for label, kw in (("deepgaze_uniform", {"uniform_prior": True}),
                      ("deepgaze_centre", {"prior": cb})):
        m = load_model("deepgaze", checkpoint=model_path(params), backbone=base, name=label,
                       device=common.device(params), **kw)
        out.append(score_model(label, "deepgaze", arrays, m.saliency_map,
                               progress=common.progress(params)))
    return out


def mlnet_rows(params: Params, base, arrays) -> pd.DataFrame:
    """ML-Net (the ``mlnet`` stage's model) on the arrays, a Table 4 deep row: its output map
    (learned prior included: ML-Net has no separate centre bias)."""
    from dissect.models.base import load_model
    from dissect.popout_scoring import score_model
    from dissect.stages.mlnet import model_path

    m = load_model("mlnet", checkpoint=model_path(params), backbone=base,
                   device=common.device(params))
    return score_model("mlnet", "mlnet", arrays, m.saliency_map, progress=common.progress(params))


def implicit_rows(params: Params, arrays) -> list[pd.DataFrame]:
    """Implicit saliency ``S_C`` (at the first of ``implicit.layers``) and Grad-CAM (at
    ``implicit.gradcam_layer``) of the pretrained trunk on the arrays, Table 4's rows for the
    models read out of a classifier without eye-tracking data. The two share a freshly loaded
    copy of the trunk (they hook its modules, under its lock; nothing else runs on it). The
    arrays are not in the ``extract-implicit`` cache: S_C is computed for each (~5 s an array
    on 2 CPU cores for the 1000 classes)."""
    from dissect.models.base import load_model
    from dissect.popout_scoring import score_model
    from dissect.stages.implicit import implicit_layers, statistics_kwargs

    bb = common.backbone(params)
    bb.model.to(common.device(params))
    implicit = load_model("implicit_saliency", backbone=bb, layer=implicit_layers(params)[0],
                          variance_norm=params["implicit"]["variance_norm"],
                          **statistics_kwargs(params))
    gradcam = load_model("gradcam", backbone=bb, layer=str(params["implicit"]["gradcam_layer"]))
    return [score_model("implicit_saliency", "implicit", arrays, implicit.saliency_map,
                        progress=common.progress(params)),
            score_model("gradcam", "gradcam", arrays, gradcam.saliency_map,
                        progress=common.progress(params))]


def run_popout_readouts(params: Params) -> None:
    """The saliency readouts (setup I, each k of setup II), DeepGaze I
    (:func:`deepgaze_rows`), ML-Net (:func:`mlnet_rows`), implicit saliency and Grad-CAM
    (:func:`implicit_rows`) next to the classical models
    (Table 4), and the last trunk layer's units vs k (Table 6): the readouts of the first
    training seed (``train.seeds[0]``; the seed issue asks for Tables 3, 7, Fig. 4 and §6 over
    seeds, and these tables name the seed they use in provenance)."""
    from dissect.data.popout import load_set
    from dissect.inner_output import predict_map
    from dissect.models.base import load_model
    from dissect.popout_scoring import inner_unit_nmm, layer_summary, score_model
    from dissect.tables import write_table
    from dissect.task_compare import finetuned_trunk

    k_top = int(params["stats"]["top_k"])
    last = common.layer_names(params)[-1]
    seed = common.seeds(params)[0]
    recorded = {"top_k": k_top, "seed": seed}
    with stage_record(params.work, "popout-readouts", recorded) as rec:
        arrays = load_set(arrays_dir(params))
        base = common.backbone(params)
        scored = [pd.read_csv(common.results(params, "tables", "popout", "popout_nmm.csv"))]
        inner = pd.read_csv(common.work(params, "popout", "inner_units.csv"))
        inner_k = [inner[(inner["model"] == "pt") & (inner["layer"] == last)]]
        for name in common.model_names(params)[1:]:
            readout = load_model("readout", checkpoint=common.readout_path(params, name, seed),
                                 backbone=base).readout  # the nn.Module, in eval mode
            label = common.model_label(name)
            scored.append(score_model(f"readout_{label}", "readout", arrays,
                                      lambda image, r=readout: predict_map(r, image),
                                      progress=common.progress(params)))
            if common.trunk_model(name) != "pt":
                df, _ = inner_unit_nmm(finetuned_trunk(readout, name), [last], arrays, k_top,
                                       label, progress=common.progress(params))
                inner_k.append(df)
        scored += deepgaze_rows(params, base, arrays)
        scored.append(mlnet_rows(params, base, arrays))
        scored += implicit_rows(params, arrays)
        per_array = pd.concat(scored, ignore_index=True)
        inner_all = pd.concat(inner_k, ignore_index=True)
        with common.replacing(common.results(params, "tables", "popout_readouts")) as out:
            _write_model_tables(per_array, out)
            write_table(layer_summary(inner_all), out / "table6_popout_k")
        inner_all.to_csv(common.work(params, "popout", "inner_units_finetuned.csv"), index=False)
        rec["n_arrays"] = len(arrays)
