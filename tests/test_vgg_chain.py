"""The study's configuration (He et al. 2019: VGG-16, units of conv4_1 … conv5_3, 224 px input) is
one parameter away from the default one.

ImageNet VGG weights cannot be downloaded here, so the chain runs with ``weights: random`` on a
few OSIE images; with ``weights: imagenet`` the same parameters need ``vgg16-397923af.pth`` and
say so. The whole-chain test is the default chain of ``test_pipeline_chain.py`` with only the
``backbone`` block (and smaller sizes) changed."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from test_pipeline_chain import small_params

from dissect.config import load_params
from dissect.errors import WeightsError

#: the units analysed in the study: VGG-16's post-ReLU conv4_1 … conv5_3
STUDY_LAYERS = ["conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
VGG_BACKBONE = {
    "name": "vgg16",
    "weights": "random",
    "checkpoint": None,
    "layers": STUDY_LAYERS,
    "factory": None,  # a built-in backbone: no factory, its own normalisation
    "mean": None,
    "std": None,
}


def study_params(**backbone):
    """pipelines/params.yaml with only backbone keys overridden (read, never written)."""
    return load_params(overrides={f"backbone.{k}": v for k, v in backbone.items()})


def test_vgg16_study_config_resolves():
    from dissect.models.readout import SaliencyReadout
    from dissect.stages import common

    params = study_params(name="vgg16", weights="random", layers=STUDY_LAYERS)
    bb = common.backbone(params)
    assert bb.name == "vgg16" and bb.weights_id  # random weights: hash of the seeded state dict
    assert len(bb.stages) == 13
    assert bb.stage_names[-6:] == STUDY_LAYERS  # one trunk stage per conv layer
    assert set(STUDY_LAYERS) <= set(bb.layers) and bb.last_layer == "conv5_3"
    assert [bb.stage_of(layer) for layer in STUDY_LAYERS] == STUDY_LAYERS
    assert bb.preprocess.size == (224, 224)
    # setup II with k = 6 fine-tunes exactly the analysed layers; k = 0 none; k = 1 conv5_3
    readout = SaliencyReadout(bb, 6)
    assert readout.channels == 512
    assert readout.tuned_stage_names == STUDY_LAYERS
    trainable = [
        n
        for n, m in zip(readout.stage_names, readout.stages, strict=True)
        if all(p.requires_grad for p in m.parameters())
    ]
    assert trainable == STUDY_LAYERS
    assert readout.setup(0).tuned_stage_names == []
    assert readout.setup(1).tuned_stage_names == ["conv5_3"]


def test_vgg16_imagenet_without_checkpoint_says_how_to_get_it(tmp_path, monkeypatch):
    from dissect import backbones
    from dissect.stages import common

    home = tmp_path / "torch_home"  # empty: no real hub cache can answer
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(enum_name: str) -> None:
        raise RuntimeError("offline (test)")

    monkeypatch.setattr(backbones, "_torchvision_download", offline)
    params = study_params(name="vgg16", layers=STUDY_LAYERS)
    assert params["backbone"]["weights"] == "imagenet"
    assert params["backbone"]["checkpoint"] is None
    with pytest.raises(WeightsError) as err:
        common.backbone(params)
    msg = str(err.value)
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    assert str(home / "hub" / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "checkpoint=" in msg and "offline (test)" in msg
    assert not (home / "hub" / "checkpoints" / "vgg16-397923af.pth").exists()


@pytest.mark.osie
def test_vgg16_chain_random_weights(tmp_path, osie_root, osie_regions_root):
    from dissect.association import load_associations
    from dissect.stages import (
        associate,
        common,
        extract,
        inner_output,
        prepare,
        statistics,
        train,
    )

    params = small_params(tmp_path, osie_root, osie_regions_root, backbone=dict(VGG_BACKBONE))
    params["data"]["max_images"] = 4
    params["extract"]["batch_size"] = 4
    params["train"].update(ks=[0, 1, 6], epochs=1, patience=1, batch_size=4, seeds=[0])
    params["scene"]["seeds"] = [0]

    timings = {}
    t0 = time.perf_counter()
    for name, run in [
        ("prepare", prepare.run_prepare),
        ("extract", extract.run_extract),
        ("train", train.run_train),
        ("extract-finetuned", extract.run_extract_finetuned),
        ("associate", associate.run_associate),
        ("statistics", statistics.run_statistics),
        ("inner-output", inner_output.run_inner_output),
    ]:
        t = time.perf_counter()
        out = run(params)
        timings[name] = round(time.perf_counter() - t, 1)
        if name == "statistics":
            stats = out
    elapsed = time.perf_counter() - t0
    print("stage seconds:", timings)

    heldout = common.ids_of(params, "heldout")
    assert len(heldout) == 4
    summary = json.loads((params.work / "train" / "summary.json").read_text())
    assert summary["n_stages"] == 13
    runs = {(r["model"], r["seed"]): r for r in summary["runs"]}
    assert runs["k0", 0]["tuned_stages"] == []
    assert runs["k1", 0]["tuned_stages"] == ["conv5_3"]
    assert runs["k6", 0]["tuned_stages"] == STUDY_LAYERS
    # activations of the study's layers: 512 units at 28×28 (conv4_x) and 14×14 (conv5_x)
    assoc = load_associations(common.assoc_store(params, "pt"), STUDY_LAYERS)
    assert list(assoc) == STUDY_LAYERS
    for layer, da in assoc.items():
        assert da.sizes["unit"] == 512, layer
        assert np.isfinite(da.values).any(), layer
    for k in ("k1", "k6"):  # fine-tuned trunks: their last layer cached and associated
        fin = load_associations(common.assoc_store(params, k, 0), ["conv5_3"])["conv5_3"]
        assert fin.sizes["unit"] == 512
    # Table 2 over the study's layers, Table 3 over k ∈ {0, 1, 6}
    pt = stats[stats["model"] == "pt"]
    assert list(dict.fromkeys(pt["layer"])) == STUDY_LAYERS
    assert pt["p_value"].dropna().between(0, 1).all()
    by_k = stats[stats["model"] != "pt"]
    assert set(by_k["layer"]) == {"conv5_3"}
    assert sorted(set(by_k["k"])) == [0, 1, 6]
    # setup I shares the pretrained trunk: its unit statistics are those of pt's conv5_3
    k0 = by_k[by_k["model"] == "k0"].set_index(["category", "stat"])["value"].sort_index()
    ptl = pt[pt["layer"] == "conv5_3"].set_index(["category", "stat"])["value"].sort_index()
    pd.testing.assert_series_equal(k0, ptl, check_names=False)
    res = params.results / "tables"
    table2 = pd.read_csv(res / "statistics" / "table2_top10_mean.csv")
    assert set(STUDY_LAYERS) <= set(table2.astype(str).to_numpy().ravel())
    io = pd.read_csv(res / "inner_output" / "inner_output.csv")
    assert set(io["model"]) == {"k0", "k1", "k6"}
    perf = pd.read_csv(res / "inner_output" / "readout_performance.csv")
    assert list(perf["model"]) == ["k0", "k1", "k6"]
    assert np.isfinite(perf[["nss", "cc", "auc_judd"]].to_numpy()).all()
    assert elapsed < 150, f"VGG-16 chain took {elapsed:.0f} s ({timings})"
