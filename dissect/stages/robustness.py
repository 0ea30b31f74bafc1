"""Stage ``robustness``: every image-based model of the scorecard scored again on heavily blurred
held-out images (Sun, Prabhushankar & AlRegib 2020, Table 2), with each model's drop in NSS and
CC (:mod:`dissect.robustness`).

Models: ``evaluate.models`` without ``uniform`` (NSS and CC are undefined for a constant map) and
``gold_standard`` (it is built from the other observers' fixations, not from the image, so a
blur cannot change it); the centre bias stays in as the check that a model which ignores the
image loses nothing. Each is its raw map model, built as the ``evaluate`` stage builds it
(:func:`dissect.stages.evaluate.build_models` with ``fit=False``: NSS and CC score maps, no
density conversion is needed). The clean scores are the ``evaluate`` stage's per-image NSS and
CC (the same functions and conventions), so the drop is paired image by image.

Blur: σ = ``implicit.blur_radius`` × width / ``implicit.blur_reference_width`` (the paper's
radius 50 px on MIT1003's 1024-px width → 39.06 px on OSIE's 800 px).

Outputs: ``results/tables/robustness/table2_blur`` (per model: clean, blurred and drop of NSS and
CC with paired image-bootstrap intervals, ``stats.n_boot`` / ``stats.ci_*``; drop = clean −
blurred), the per-image
scores in ``work/robustness/per_image.csv``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.robustness")

#: scorecard models left out (module docstring)
NOT_IMAGE_BASED = ("uniform", "gold_standard")


def robustness_table(clean: pd.DataFrame, blurred: pd.DataFrame, *, n_boot: int, seed: int,
                     level: float, method: str) -> pd.DataFrame:
    """Per model and metric (NSS, CC), on the images where both the clean and the blurred score
    are defined: ``<m>_clean``, ``<m>_blurred`` (their means), ``<m>_drop`` (the mean of clean −
    blurred on the same image, > 0: the blur cost the model) with its paired image-bootstrap
    interval, ``<m>_relative_drop`` (drop / clean mean) and ``<m>_n_images``; from tidy
    per-image ``model, image, nss, cc`` tables (each image once per model and input, the same
    images on both sides — a ``DataError`` names the model otherwise)."""
    from dissect.errors import DataError
    from dissect.image_means import mean_ci

    rows = []
    for model in pd.unique(blurred["model"]):
        c = clean[clean["model"] == model].set_index("image")
        b = blurred[blurred["model"] == model].set_index("image")
        if c.index.duplicated().any() or b.index.duplicated().any():
            raise DataError(str(model), "an image is scored twice")
        if set(c.index) != set(b.index):
            raise DataError(str(model), f"clean and blurred scores cover different images "
                                        f"({len(c)} vs {len(b)})")
        c = c.reindex(b.index)
        row: dict = {"model": model}
        for metric in ("nss", "cc"):
            cv, bv = c[metric].to_numpy(float), b[metric].to_numpy(float)
            ok = np.isfinite(cv) & np.isfinite(bv)
            d = mean_ci(cv[ok] - bv[ok], n_boot=n_boot, seed=seed, level=level, method=method)
            row[f"{metric}_clean"] = float(cv[ok].mean()) if ok.any() else np.nan
            row[f"{metric}_blurred"] = float(bv[ok].mean()) if ok.any() else np.nan
            row[f"{metric}_drop"] = d["value"]
            row[f"{metric}_drop_ci_low"], row[f"{metric}_drop_ci_high"] = d["ci_low"], d["ci_high"]
            row[f"{metric}_relative_drop"] = (d["value"] / row[f"{metric}_clean"]
                                              if row[f"{metric}_clean"] else np.nan)
            row[f"{metric}_n_images"] = int(ok.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def run_robustness(params: Params) -> pd.DataFrame:
    from dissect.robustness import blurred_records, reference_blur_sigma
    from dissect.stages.baselines import load_baselines
    from dissect.stages.evaluate import build_models
    from dissect.tables import write_table

    im, e, s = params["implicit"], params["evaluate"], params["stats"]
    drop_first = bool(params["data"]["drop_first"])
    gt_sigma = float(params["gt"]["sigma_deg"]) * float(params["gt"]["px_per_degree"])
    recorded = {"evaluate": e, "implicit": im, "gt": params["gt"],
                **{f"stats.{k}": s[k] for k in ("n_boot", "seed", "ci_level", "ci_method")},
                "device": params.get("device", "auto")}
    with stage_record(params.work, "robustness", recorded) as rec:
        dataset, _ = common.inputs(params)
        ids = common.ids_of(params, "heldout")
        cb, gold = load_baselines(params, dataset)
        models, _ = build_models(params, dataset, cb, gold, fit=False)
        models = {k: m for k, m in models.items() if k not in NOT_IMAGE_BASED}
        log.info("scoring %d models on %d blurred held-out images", len(models), len(ids))
        blurred = blurred_records(
            models, dataset, ids, gt_sigma_px=gt_sigma, drop_first=drop_first,
            conventions=str(e["conventions"]), radius=float(im["blur_radius"]),
            reference_width=int(im["blur_reference_width"]), progress=common.progress(params))
        blurred.to_csv(common.work(params, "robustness", "per_image.csv"), index=False)
        per_image = pd.read_csv(common.work(params, "evaluate", "per_image.csv"),
                                dtype={"image": str})
        clean = (per_image[per_image["metric"].isin(["nss", "cc"])
                           & per_image["model"].isin(list(models))]
                 .pivot_table(index=["model", "image"], columns="metric", values="value",
                              dropna=False).reset_index())
        missing = sorted(set(models) - set(clean["model"]))
        if missing:
            from dissect.errors import DataError

            raise DataError(common.work(params, "evaluate", "per_image.csv"),
                            f"no clean scores for {missing}: rerun the evaluate stage")
        table = robustness_table(clean, blurred, n_boot=int(s["n_boot"]), seed=int(s["seed"]),
                                 level=float(s["ci_level"]), method=str(s["ci_method"]))
        table = table.sort_values("nss_drop", kind="stable").reset_index(drop=True)
        widths = sorted({int(dataset[i].size[1]) for i in ids})
        radius, ref = float(im["blur_radius"]), int(im["blur_reference_width"])
        sigmas = ", ".join(f"{reference_blur_sigma(w, radius, ref):.2f} px at {w} px"
                           for w in widths)
        with common.replacing(common.results(params, "tables", "robustness")) as out:
            out.mkdir()
            show = table[["model", "nss_clean", "nss_blurred", "nss_drop", "nss_relative_drop",
                          "cc_clean", "cc_blurred", "cc_drop", "cc_relative_drop",
                          "nss_n_images"]]
            write_table(table, out / "table2_blur", markdown=show,
                        caption=f"Held-out OSIE images (n = {len(ids)}) blurred with a Gaussian "
                                f"of σ = {im['blur_radius']} px × width / "
                                f"{im['blur_reference_width']} (Sun et al.'s radius 50 px on "
                                f"MIT1003's 1024-px width; {sigmas}), scored against the "
                                "original fixations; clean = the evaluate stage's scores of "
                                "the same models; drop = clean − blurred per image (> 0: the "
                                "blur cost the model; relative = drop / clean), with "
                                f"its paired {float(s['ci_level']):.0%} image-bootstrap "
                                f"interval ({s['ci_method']}, {s['n_boot']} resamples) in the "
                                "CSV. Sorted by NSS drop (least affected first). Command: "
                                "`dvc repro robustness`.")
        rec.update(models=list(models), n_images=len(ids))
    return table

