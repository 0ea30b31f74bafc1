"""``dissect <stage>``: one small command per pipeline stage (see ``pipelines/dvc.yaml``).

Every stage reads ``--params`` (default ``./params.yaml``, else ``./pipelines/params.yaml``),
accepts ``--set key=value`` overrides (dotted keys, YAML values) and ``--scheduler`` (a
dask.distributed address; default from params ``dask.scheduler`` or ``$DISSECT_SCHEDULER``;
none = local threads).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time

import yaml

from dissect.errors import DissectError

STAGES: dict[str, tuple[str, str]] = {
    # name: (module in dissect.stages, one-line help)
    "prepare": ("prepare", "validate OSIE + regions, create the seeded split, write a manifest"),
    "extract": ("extract", "cache activations of the pretrained trunk (Zarr)"),
    "train": ("train", "train saliency readouts: setup I (k=0) and setup II (top k fine-tuned)"),
    "extract-finetuned": ("extract", "cache activations of every trained readout's trunk"),
    "associate": ("associate", "unit x region NSS (Eq. 1) for every cached model"),
    "statistics": ("statistics", "category statistics with null and CIs: Tables 2-3, Fig. 4"),
    "inner-output": ("inner_output", "output saliency OS / OD (Eqs. 2-3), Spearman, ANOVA, Tukey"),
    "popout-arrays": ("popout", "generate the pop-out search arrays with exact masks"),
    "popout": ("popout", "NMM (Eq. 4) of classical models and pretrained units: Tables 4-5"),
    "popout-readouts": ("popout", "NMM of the saliency readouts and fine-tuned units: Tables 4, 6"),
    "baselines": ("baselines", "fit the centre bias and the gold standard on training images"),
    "extract-deepgaze": ("deepgaze", "cache the DeepGaze I feature layers at half image size"),
    "deepgaze": ("deepgaze", "DeepGaze I: layer comparison, committed model, picked units"),
    "mlnet": ("mlnet", "train ML-Net (multi-level features, learned prior) on the training split"),
    "mlnet-dissect": ("mlnet_dissect", "ML-Net's encoding units (Eq. 1), learned prior, pop-out"),
    "extract-implicit": ("implicit", "cache the class-gradient statistics (µ, V) of the "
                                     "implicit-saliency layers (Zarr)"),
    "implicit": ("implicit", "implicit saliency per layer vs Grad-CAM, Guided Backprop; "
                             "gradient units (Eq. 1)"),
    "evaluate": ("evaluate", "every model x every metric on held-out images: the leaderboard"),
    "robustness": ("robustness", "every model on Gaussian-blurred held-out images: the drop"),
    "scene": ("scene", "scene-recognition fine-tuning and pt/sp/sr comparison: Tables 7-8"),
    "figures": ("figures", "all figures from the committed tables and caches"),
    "report": ("report", "results/report.md with provenance"),
    "site": ("site", "the unit browser (results/site) and results/report.html"),
}


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SystemExit(f"--set {key}: the value {value!r} is not valid YAML: "
                             + " ".join(str(exc).split())) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dissect", description="Unit-by-unit dissection of deep saliency models (stages)."
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default=None,
                       help="params.yaml (default ./params.yaml, else ./pipelines/params.yaml)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter, e.g. --set stats.threshold=2.0")
        p.add_argument("--scheduler", default=None,
                       help="dask.distributed scheduler address (default: local threads)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    v = sub.add_parser("verify", help="check an activation store's chunks against their "
                       "checksums; exit 1 naming every damaged or missing chunk",
                       description="Check an activation store (dissect.cache): every chunk of "
                       "every batch marked done is on disk with the bytes written (checksum). "
                       "Prints one line per problem (store, layer, chunk, images) and exits 1 "
                       "when there is any, 0 when the store is complete and intact. Rerunning "
                       "the extraction recomputes what it reports.")
    v.add_argument("store", help="path of the Zarr activation store, e.g. work/act/pt.zarr")
    return parser


def _verify(store: str) -> int:
    """``dissect verify STORE``: 0 intact and complete, 1 problems (printed), 2 not a store."""
    from dissect.cache import verify_store

    try:
        problems = verify_store(store)
    except DissectError as exc:
        print(f"dissect verify: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    n = len(problems)
    print(f"dissect verify: {store}: " + (f"{n} problem(s)" if n else "complete and intact"),
          file=sys.stderr)
    return 1 if n else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "verify":
        return _verify(args.store)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from dissect.config import load_params

    overrides = _parse_set(args.set)
    scheduler = args.scheduler or os.environ.get("DISSECT_SCHEDULER")
    if scheduler:
        overrides["dask.scheduler"] = scheduler
    if args.quiet:
        overrides["progress"] = False
    module_name, _ = STAGES[args.stage]
    module = importlib.import_module(f"dissect.stages.{module_name}")
    run = getattr(module, "run_" + args.stage.replace("-", "_"))
    from tqdm.contrib.logging import logging_redirect_tqdm

    from dissect.provenance import closing_line

    t0 = time.perf_counter()
    try:
        params = load_params(args.params, overrides)
        logging.getLogger("dissect").info("parameters: %s", params.base / params.file)
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            result = run(params)
    except DissectError as exc:
        print(f"dissect {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    print(closing_line(args.stage, params, result, time.perf_counter() - t0), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
