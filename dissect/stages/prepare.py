"""Stage ``prepare``: validate OSIE and its regions, create the seeded split once, write a
manifest (counts and content hashes) that later stages and the report cite."""

from __future__ import annotations

import json
import logging

from dissect.config import Params
from dissect.provenance import hash_files, stage_record
from dissect.stages import common

log = logging.getLogger("dissect.prepare")


def run_prepare(params: Params) -> dict:
    from dissect.data import ensure_split

    d = params["data"]
    with stage_record(params.work, "prepare", {"data": d}) as rec:
        dataset, regions = common.inputs(params)
        n_checked = dataset.validate(full=False)
        split = ensure_split(params.path(d["split_file"]), dataset.ids, int(d["n_heldout"]),
                             int(d["split_seed"]))
        osie = params.path(d["osie"])
        regions_dir = params.path(d["regions"])
        # contents, never absolute paths: the manifest (and so dvc.lock) is the same in every
        # clone and on every machine with the same data
        manifest = {
            "n_images": len(dataset),
            "n_subjects": int(dataset.fixations["subject"].nunique()),
            "n_fixations": int(len(dataset.fixations)),
            "n_regions": int(len(regions.table)),
            "regions_per_category": regions.table["category"].value_counts().to_dict(),
            "n_train": int((split["split"] == "train").sum()),
            "n_heldout": int((split["split"] == "heldout").sum()),
            "images_checked": int(n_checked),
            "fixations_sha": hash_files([osie / "data" / "eye" / "fixations.mat"]),
            "stimuli_sha": hash_files(dataset[i].file for i in dataset.ids),
            "regions_sha": hash_files((p for p in regions_dir.rglob("*")
                                       if p.is_file() and p.suffix in (".csv", ".png")),
                                      root=regions_dir),
            "scenes_sha": hash_files([params.path(d["scenes"])]),
        }
        rec.update(manifest)
        out = common.work(params, "prepare", "manifest.json")
        out.write_text(json.dumps(manifest, indent=2))
        log.info("OSIE: %d images, %d fixations, %d regions; split %d train / %d held out",
                 manifest["n_images"], manifest["n_fixations"], manifest["n_regions"],
                 manifest["n_train"], manifest["n_heldout"])
    return manifest
