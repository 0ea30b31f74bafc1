"""Stage ``baselines``: fit the centre bias and the gold standard on the training images.

* centre bias (:class:`dissect.models.baselines.CentreBiasModel`): the unit-square KDE of the
  fixations of every training image, bandwidth and uniform mixing by leave-one-image-out
  log-likelihood → ``work/baselines/centre_bias.npz``;
* gold standard (:class:`~dissect.models.baselines.GoldStandardModel`): the per-image KDE of the
  other observers, mixed with that centre bias; bandwidth (pixels) and mixing weight by
  leave-one-subject-out log-likelihood on the first ``baselines.gold_train_images`` training
  images → ``work/baselines/gold_standard.json``.

Both are fitted on training images only (never on the held-out images they are scored on), and
the fitted values go to ``results/tables/baselines.csv``.
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from dissect.config import Params
from dissect.provenance import stage_record
from dissect.stages import common

log = logging.getLogger("dissect.baselines")


def centre_bias_path(params: Params):
    return common.work(params, "baselines", "centre_bias.npz")


def gold_standard_path(params: Params):
    return common.work(params, "baselines", "gold_standard.json")


def load_baselines(params: Params, dataset):
    """The fitted ``(centre_bias, gold_standard)`` models of this stage's outputs."""
    from dissect.errors import DataError
    from dissect.models.baselines import GoldStandardModel, load_centre_bias

    cb = load_centre_bias(centre_bias_path(params))
    path = gold_standard_path(params)
    if not path.is_file():
        raise DataError(path, "missing: run the `baselines` stage first")
    g = json.loads(path.read_text())
    gold = GoldStandardModel(dataset, bandwidth=float(g["bandwidth"]),
                             mixing_weight=float(g["mixing_weight"]), baseline=cb,
                             drop_first=bool(g["drop_first"]))
    return cb, gold


def run_baselines(params: Params) -> pd.DataFrame:
    from dissect.models.baselines import CentreBiasModel, GoldStandardModel, save_centre_bias

    b = params["baselines"]
    drop = bool(params["data"]["drop_first"])
    with stage_record(params.work, "baselines", {"baselines": b, "drop_first": drop}) as rec:
        dataset, _ = common.inputs(params)
        train = common.ids_of(params, "train")
        cb = CentreBiasModel.fit(dataset, train, drop_first=drop, bins=int(b["centre_bias_bins"]),
                                 progress=common.progress(params))
        save_centre_bias(cb, centre_bias_path(params))
        log.info("centre bias: bandwidth %.4f, uniform weight %.2g, LOO %.3f bits/fix over "
                 "uniform (%d training images)", cb.bandwidth, cb.mixing_weight,
                 cb.loo_log_likelihood_, len(train))
        gold_ids = train[: int(b["gold_train_images"])]
        gold = GoldStandardModel(dataset, baseline=cb, drop_first=drop).fit(
            gold_ids, progress=common.progress(params))
        log.info("gold standard: bandwidth %.2f px, centre-bias weight %.3f, LOSO %.3f bits/fix "
                 "over uniform (%d training images)", gold.bandwidth, gold.mixing_weight,
                 gold.loo_log_likelihood_, len(gold_ids))
        record = {"bandwidth": gold.bandwidth, "mixing_weight": gold.mixing_weight,
                  "drop_first": drop, "loso_bits": gold.loo_log_likelihood_,
                  "n_images": len(gold_ids)}
        path = gold_standard_path(params)
        with common.replacing(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        table = pd.DataFrame([
            {"model": "centre_bias", "parameter": "bandwidth", "value": cb.bandwidth,
             "unit": "unit square", "fitted_on": "leave-one-image-out", "n_images": len(train)},
            {"model": "centre_bias", "parameter": "uniform_weight", "value": cb.mixing_weight,
             "unit": "", "fitted_on": "leave-one-image-out", "n_images": len(train)},
            {"model": "centre_bias", "parameter": "loo_log_likelihood",
             "value": cb.loo_log_likelihood_, "unit": "bits/fixation over uniform",
             "fitted_on": "leave-one-image-out", "n_images": len(train)},
            {"model": "gold_standard", "parameter": "bandwidth", "value": gold.bandwidth,
             "unit": "px", "fitted_on": "leave-one-subject-out", "n_images": len(gold_ids)},
            {"model": "gold_standard", "parameter": "centre_bias_weight",
             "value": gold.mixing_weight, "unit": "", "fitted_on": "leave-one-subject-out",
             "n_images": len(gold_ids)},
            {"model": "gold_standard", "parameter": "loso_log_likelihood",
             "value": gold.loo_log_likelihood_, "unit": "bits/fixation over uniform",
             "fitted_on": "leave-one-subject-out", "n_images": len(gold_ids)},
        ])
        with common.replacing(common.results(params, "tables", "baselines.csv")) as out:
            table.to_csv(out, index=False)
        rec.update(centre_bias={"bandwidth": cb.bandwidth, "uniform_weight": cb.mixing_weight,
                                "n_images": len(train)}, gold_standard=record)
    return table
