"""Pop-out scoring (He et al. §7, Eq. 4, Tables 4–6): :mod:`dissect.popout_scoring` against
independent references — ``F.interpolate`` upsampling, item masks from connected components,
straight loops over masks and units, hand-computed tables."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers_cache import tiny_backbone
from scipy import ndimage

from dissect.data.popout import DIMENSIONS, default_set, generate_array
from dissect.errors import DataError
from dissect.popout_scoring import (
    NMM_COLUMNS,
    inner_unit_nmm,
    layer_summary,
    map_nmm,
    model_tables,
    nmm_row,
    score_model,
)

SMALL = {"height": 120, "width": 160, "rows": 3, "cols": 4, "item_size": 16.0}


def _array(dimension: str = "colour", seed: int = 0):
    return generate_array(dimension, seed, **SMALL)


def _masks_by_components(array) -> tuple[np.ndarray, list[np.ndarray]]:
    """Target and distractor masks found independently: 8-connected components of the
    non-background pixels; the component(s) under the target mask are the target."""
    bg = np.array(array.meta["params"]["background"], dtype=np.uint8)
    drawn = (array.image != bg).any(axis=2)
    lab, n = ndimage.label(drawn, structure=np.ones((3, 3)))
    target_labels = set(np.unique(lab[array.mask])) - {0}
    target = np.isin(lab, list(target_labels))
    distractors = [lab == i for i in range(1, n + 1) if i not in target_labels]
    return target, distractors


def _nmm_loop(full: np.ndarray, mask: np.ndarray) -> float:
    """Eq. 4 by a loop over the mask's pixels: mean of (S − µ) / σ (population σ)."""
    mu, sd = full.mean(), full.std()
    ys, xs = np.nonzero(mask)
    return float(np.mean([(full[y, x] - mu) / sd for y, x in zip(ys, xs, strict=True)]))


def _up(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(a)[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("dimension", ["colour", "size", "orientation"])
def test_map_nmm_feature_resolution_vs_interpolate_and_loop(dimension):
    a = _array(dimension, 3)
    target, distractors = _masks_by_components(a)
    assert np.array_equal(target, a.mask) and len(distractors) == a.meta["n_items"] - 1
    rng = np.random.default_rng(1)
    small = rng.random((7, 9))
    up = _up(small, a.mask.shape)
    t, d = map_nmm(small, a)
    assert t == pytest.approx(_nmm_loop(up, target), abs=1e-9)
    assert d == pytest.approx(np.mean([_nmm_loop(up, m) for m in distractors]), abs=1e-9)


def test_map_nmm_full_resolution_vs_loop():
    a = _array("colour", 5)
    target, distractors = _masks_by_components(a)
    rng = np.random.default_rng(2)
    full = rng.normal(size=a.mask.shape)
    full[target] += 3.0  # a map that singles out the target
    t, d = map_nmm(full, a)
    assert t == pytest.approx(_nmm_loop(full, target), abs=1e-12)
    assert d == pytest.approx(np.mean([_nmm_loop(full, m) for m in distractors]), abs=1e-12)
    assert t > 2.0 > abs(d)
    row = nmm_row("m", "classical", a, full)
    assert list(row) == list(NMM_COLUMNS)
    assert row["array"] == a.id and row["dimension"] == "colour"
    assert row["nmm_excess"] == pytest.approx(t - d)
    # a perfect item detector has zero excess: every item stands out equally
    items = a.mask | np.any(distractors, axis=0)
    t_all, d_all = map_nmm(items.astype(np.float64), a)
    assert t_all == pytest.approx(d_all) and t_all > 0


def test_map_nmm_constant_map_is_nan():
    a = _array("colour", 1)
    for m in (np.full(a.mask.shape, 2.0), np.full((5, 5), 2.0)):
        t, d = map_nmm(m, a)
        assert np.isnan(t) and np.isnan(d)


def test_score_model_calls_the_map_on_each_array():
    arrays = [_array("colour", 0), _array("size", 1)]
    seen = []

    def saliency(image):
        seen.append(image.shape)
        return image.astype(np.float64).sum(axis=2)

    df = score_model("sum", "classical", arrays, saliency)
    assert list(df.columns) == list(NMM_COLUMNS) and len(df) == 2
    assert seen == [(120, 160, 3)] * 2
    for a, (_, row) in zip(arrays, df.iterrows(), strict=True):
        full = a.image.astype(np.float64).sum(axis=2)
        target, distractors = _masks_by_components(a)
        assert row["nmm"] == pytest.approx(_nmm_loop(full, target))
        assert row["nmm_distractors"] == pytest.approx(
            np.mean([_nmm_loop(full, m) for m in distractors]))


def test_inner_unit_nmm_top_k_vs_a_loop():
    bb = tiny_backbone(0)
    arrays = [_array("colour", 0), _array("luminance", 2)]
    k = 3
    df, best = inner_unit_nmm(bb, ["c1", "c2"], arrays, k, "pt")
    assert len(df) == 4 and set(df["model"]) == {"pt"}
    stage1, stage2 = (m for _, m in bb.stages)
    for a in arrays:
        x = bb.preprocess(a.image)
        with torch.no_grad():  # the trunk run by hand, stage by stage
            a1 = stage1(x)
            a2 = stage2(a1)
        for layer, act in (("c1", a1), ("c2", a2)):
            maps = act[0].double().numpy()
            values = []
            for u in range(maps.shape[0]):
                up = _up(maps[u], a.mask.shape)
                values.append(np.nan if up.std() < 1e-12 else _nmm_loop(up, a.mask))
            v = np.array(values)
            ok = np.flatnonzero(np.isfinite(v))
            ranked = sorted(v[ok], reverse=True)
            row = df[(df["layer"] == layer) & (df["array"] == a.id)].iloc[0]
            assert row["dimension"] == a.dimension
            assert row["n_units"] == maps.shape[0]
            assert row["n_constant"] == maps.shape[0] - ok.size
            assert row["top_nmm"] == pytest.approx(np.mean(ranked[:k]), abs=1e-6)
            assert row["best_nmm"] == pytest.approx(ranked[0], abs=1e-6)
            assert v[int(row["best_unit"])] == pytest.approx(ranked[0], abs=1e-6)
            assert best[("pt", layer, a.id)] == row["best_unit"]


def _per_array() -> pd.DataFrame:
    rows = [  # model, dimension, nmm, nmm_excess
        ("A", "colour", 1.0, 0.5), ("A", "size", 3.0, 1.5), ("A", "conjunction_cs", 0.0, -1.0),
        ("B", "colour", 2.0, 1.0), ("B", "size", np.nan, np.nan),
        ("B", "conjunction_cs", 4.0, 2.0), ("B", "colour", 4.0, 3.0),
    ]
    df = pd.DataFrame(rows, columns=["model", "dimension", "nmm", "nmm_excess"])
    return df.assign(kind="x", array=[f"a{i}" for i in range(len(df))],
                     nmm_distractors=df["nmm"] - df["nmm_excess"])


def test_model_tables_by_hand():
    t4, by_dim = model_tables(_per_array())
    t = t4.set_index("model")
    assert list(t.index) == ["A", "B"]
    # A: feature arrays colour 1, size 3; conjunction 0
    assert t.loc["A", "nmm_feature"] == pytest.approx(2.0)
    assert t.loc["A", "nmm_excess_feature"] == pytest.approx(1.0)
    assert t.loc["A", "nmm_conjunction"] == pytest.approx(0.0)
    assert t.loc["A", "nmm_all"] == pytest.approx(4.0 / 3)
    assert t.loc["A", "nmm_excess_all"] == pytest.approx(1.0 / 3)
    # B: feature arrays colour 2, 4 and an undefined size array (NaN skipped)
    assert t.loc["B", "nmm_feature"] == pytest.approx(3.0)
    assert t.loc["B", "nmm_excess_feature"] == pytest.approx(2.0)
    assert t.loc["B", "nmm_conjunction"] == pytest.approx(4.0)
    assert t.loc["B", "nmm_all"] == pytest.approx(10.0 / 3)
    assert t.loc["B", "nmm_excess_all"] == pytest.approx(2.0)
    d = by_dim.set_index("model")
    assert list(d.index) == ["A", "B"]
    assert set(d.columns) == {"colour", "size", "conjunction_cs"}
    assert d.loc["A", "colour"] == pytest.approx(0.5)
    assert d.loc["A", "size"] == pytest.approx(1.5)
    assert d.loc["B", "colour"] == pytest.approx(2.0)
    assert np.isnan(d.loc["B", "size"])
    assert d.loc["B", "conjunction_cs"] == pytest.approx(2.0)


def test_layer_summary_by_hand():
    inner = pd.DataFrame({
        "model": ["pt"] * 4 + ["k1"] * 2,
        "layer": ["L1", "L1", "L1", "L2", "L2", "L2"],
        "dimension": ["colour", "size", "conjunction_x", "colour", "colour", "conjunction_x"],
        "top_nmm": [1.0, 2.0, 5.0, 7.0, 3.0, 4.0],
    })
    out = layer_summary(inner)
    assert list(zip(out["model"], out["layer"], strict=True)) == [
        ("pt", "L1"), ("pt", "L2"), ("k1", "L2")]
    o = out.set_index(["model", "layer"])
    assert o.loc[("pt", "L1"), "feature"] == pytest.approx(1.5)
    assert o.loc[("pt", "L1"), "conjunction"] == pytest.approx(5.0)
    assert o.loc[("pt", "L2"), "feature"] == pytest.approx(7.0)
    assert np.isnan(o.loc[("pt", "L2"), "conjunction"])
    assert o.loc[("k1", "L2"), "feature"] == pytest.approx(3.0)
    assert o.loc[("k1", "L2"), "conjunction"] == pytest.approx(4.0)


# --------------------------------------------------------------------------- the thin stages


def test_popout_stages_write_tables_through_replacing(tmp_path, monkeypatch):
    import yaml

    from dissect.config import load_params
    from dissect.models.readout import SaliencyReadout, save_readout
    from dissect.stages import common, popout

    p = yaml.safe_load(open(load_params().base / "params.yaml"))
    p["work"], p["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    p["backbone"]["layers"] = ["c1", "c2"]
    p["train"]["ks"] = [0, "all"]
    p["train"]["seeds"] = [0, 3]  # Tables 4 and 6 use the first seed's readouts
    p["stats"]["top_k"] = 2
    p["popout"].update(n_per_dimension=1, models=["spectral_residual"])
    p["progress"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    params = load_params(tmp_path / "params.yaml")
    base = tiny_backbone(0)
    monkeypatch.setattr(common, "backbone", lambda params: base)
    for name, k in (("k0", 0), ("kall", "all")):
        save_readout(common.readout_path(params, name, 0),
                     SaliencyReadout(base, k), {})
    # smaller arrays than the default 600×800 (the set test_popout.py checks): a fast test
    small_set = functools.partial(default_set, height=300, width=400, rows=3, cols=4,
                                  item_size=40.0)
    monkeypatch.setattr("dissect.data.popout.default_set", small_set)

    popout.run_popout_arrays(params)
    manifest = pd.read_csv(params.results / "tables" / "popout_manifest.csv")
    n = len(manifest)
    popout.run_popout(params)
    res = params.results / "tables"
    t5 = pd.read_csv(res / "popout" / "table5_popout_layers.csv")
    assert list(t5["layer"]) == ["c1", "c2"] and {"feature", "conjunction"} <= set(t5.columns)
    classical = pd.read_csv(res / "popout" / "popout_nmm.csv")
    assert n == len(DIMENSIONS) and len(classical) == n
    assert set(classical["model"]) == {"spectral_residual"}
    # DeepGaze I of the deepgaze stage (here a readout of c2 with random weights) and the
    # baselines stage's centre bias: Table 4's deep rows
    import torch

    from dissect.capture import LayerCapture
    from dissect.models.baselines import CentreBiasModel, save_centre_bias
    from dissect.models.deepgaze import DeepGazeI, save_deepgaze
    from dissect.stages.baselines import centre_bias_path
    from dissect.stages.deepgaze import model_path

    with LayerCapture(base, ["c2"]) as cap:
        n_c2 = cap.attribute(torch.zeros(1, 3, 16, 16))["c2"].shape[1]
    torch.manual_seed(0)
    save_deepgaze(DeepGazeI(n_c2, torch.zeros(2, 2), init_weight_std=1.0), model_path(params),
                  feature_layers=["c2"], layer_units={"c2": n_c2},
                  meta={"weights_id": base.weights_id, "input_scale": 0.5, "grid_stride": 16})
    hist = np.outer(np.hanning(8), np.hanning(8)) + 0.1
    save_centre_bias(CentreBiasModel(hist, 0.1, 0.05), centre_bias_path(params))
    # ML-Net needs a VGG-16 or Lite0 trunk, not this test's tiny one: its Table 4 row is
    # checked on real Lite0 weights by tests/test_pipeline_chain.py; here a stand-in map
    from dissect.models.base import load_model
    from dissect.popout_scoring import score_model

    monkeypatch.setattr(popout, "mlnet_rows", lambda params, base, arrays: score_model(
        "mlnet", "mlnet", arrays, load_model("spectral_residual").saliency_map))
    # implicit saliency and Grad-CAM on this tiny trunk (its layers c1 / c2; few classes)
    params["implicit"] = {**params["implicit"], "layers": ["c1"], "gradcam_layer": "c2",
                               "classes": 4, "chunk_size": 2}
    popout.run_popout_readouts(params)
    per_array = pd.read_csv(res / "popout_readouts" / "popout_nmm.csv")
    assert list(dict.fromkeys(per_array["model"])) == [
        "spectral_residual", "readout_k0", "readout_all", "deepgaze_uniform", "deepgaze_centre",
        "mlnet", "implicit_saliency", "gradcam"]
    dg = per_array[per_array["model"].str.startswith("deepgaze")].pivot(
        index="array", columns="model", values="nmm")
    assert np.isfinite(dg.to_numpy()).all()
    assert not np.allclose(dg["deepgaze_uniform"], dg["deepgaze_centre"])  # the prior matters
    assert (per_array.groupby("model").size() == n).all()
    t4 = pd.read_csv(res / "popout_readouts" / "table4_popout_models.csv")
    np.testing.assert_allclose(
        t4.set_index("model")["nmm_excess_all"],
        per_array.groupby("model", sort=False)["nmm_excess"].mean(), atol=1e-12)
    t6 = pd.read_csv(res / "popout_readouts" / "table6_popout_k.csv")
    assert list(t6["model"]) == ["pt", "all"] and set(t6["layer"]) == {"c2"}
    # setup I shares the pretrained trunk, so its units are pt's row; readout k0's map scored
    # like any feature-resolution map
    inner = pd.read_csv(params.work / "popout" / "inner_units.csv")
    pt_c2 = inner[inner["layer"] == "c2"]
    assert t6.iloc[0]["feature"] == pytest.approx(
        pt_c2.loc[~pt_c2["dimension"].str.startswith("conjunction"), "top_nmm"].mean())

    # a failing rerun leaves the committed tables untouched
    before = {f.name: f.read_bytes() for f in (res / "popout_readouts").iterdir()}
    common.readout_path(params, "kall", 0).unlink()
    with pytest.raises(DataError, match="does not exist"):
        popout.run_popout_readouts(params)
    assert {f.name: f.read_bytes() for f in (res / "popout_readouts").iterdir()} == before
    assert not list(res.glob(".popout_readouts*"))  # no temporary left behind
