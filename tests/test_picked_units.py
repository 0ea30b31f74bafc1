"""What a readout picked (dissect.picked_units) against hand-computed cases and a plain loop."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from dissect.errors import DataError
from dissect.picked_units import picked_selectivity, picked_units


def _means(values: dict[tuple[str, int], list[float]], cats=("face", "text")) -> pd.DataFrame:
    rows = [{"layer": layer, "unit": unit, "category": c, "mean_nss": v}
            for (layer, unit), vals in values.items() for c, v in zip(cats, vals, strict=True)]
    return pd.DataFrame(rows)


def _weights(ws: dict[tuple[str, int], float]) -> pd.DataFrame:
    return pd.DataFrame([{"layer": a, "unit": b, "weight": w} for (a, b), w in ws.items()])


def test_picked_units_are_the_largest_positive_weights_with_their_best_category():
    w = _weights({("a", 0): 0.5, ("a", 1): -2.0, ("b", 0): 1.5, ("b", 1): 0.1})
    m = _means({("a", 0): [1.0, 2.0], ("a", 1): [9.0, 9.0], ("b", 0): [3.0, np.nan],
                ("b", 1): [0.0, 0.0]})
    out = picked_units(w, m, top=2)
    # −2.0 is the largest |weight| but lowers the density: not picked
    assert list(zip(out["layer"], out["unit"], strict=True)) == [("b", 0), ("a", 0)]
    assert out["rank"].tolist() == [1, 2]
    assert out["best_category"].tolist() == ["face", "text"]  # NaN ignored for (b, 0)
    assert out["best_mean_nss"].tolist() == [3.0, 2.0]


def test_selectivity_matches_an_exhaustive_hand_null():
    """With 4 units and 2 picked, the null over many random pairs approaches the exact
    distribution over the 6 pairs; the picked and all-unit means are hand sums."""
    w = _weights({("a", 0): 2.0, ("a", 1): 1.0, ("a", 2): -1.0, ("a", 3): 0.0})
    vals = {("a", 0): [4.0, 0.0], ("a", 1): [2.0, 1.0], ("a", 2): [0.0, 3.0],
            ("a", 3): [np.nan, 5.0]}
    sel = picked_selectivity(w, _means(vals), top=2, n_null=4000, seed=1).set_index("category")
    assert sel.loc["face", "picked_mean"] == pytest.approx(3.0)
    assert sel.loc["text", "picked_mean"] == pytest.approx(0.5)
    assert sel.loc["face", "all_mean"] == pytest.approx(2.0)  # NaN left out: (4+2+0)/3
    assert sel.loc["text", "all_mean"] == pytest.approx(9.0 / 4)
    assert sel.loc["face", "n_picked"] == 2 and sel.loc["face", "n_all"] == 3
    # exact null for "face": means over the 6 unit pairs, NaN left out of each pair's mean
    face = [vals[k][0] for k in sorted(vals)]
    pair_means = []
    for i, j in itertools.combinations(range(4), 2):
        v = [x for x in (face[i], face[j]) if np.isfinite(x)]
        pair_means.append(np.mean(v))
    p_exact = np.mean([m >= 3.0 for m in pair_means])  # pairs (0,1) and (0,3): 2/6
    assert sel.loc["face", "p_value"] == pytest.approx(p_exact, abs=0.03)
    text = [vals[k][1] for k in sorted(vals)]
    p_text = np.mean([np.mean([text[i], text[j]]) >= 0.5
                      for i, j in itertools.combinations(range(4), 2)])
    assert sel.loc["text", "p_value"] == pytest.approx(p_text, abs=0.03)


def test_bad_input_is_named():
    m = _means({("a", 0): [1.0, 1.0]})
    with pytest.raises(DataError, match="no category means"):
        picked_units(_weights({("a", 0): 1.0, ("z", 7): 2.0}), m, top=2)
    with pytest.raises(DataError, match="non-finite"):
        picked_units(_weights({("a", 0): np.nan}), m, top=1)
    with pytest.raises(DataError, match="nothing was picked"):
        picked_selectivity(_weights({("a", 0): -1.0}), m, top=1, n_null=10)
    with pytest.raises(DataError, match="top"):
        picked_units(_weights({("a", 0): 1.0}), m, top=0)
