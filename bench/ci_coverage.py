"""Coverage of the image-bootstrap intervals of ``dissect.statistics.category_statistics``.

Synthetic association arrays whose truth is known: 200 units with category-independent true
levels ``N(0, spread²)`` plus unit-noise region values, 100 images with 1–4 regions each from
four categories (frequencies 0.5 / 0.15 / 0.3 / 0.05). Every category's true top-10 mean is the
mean of the 10 largest levels, and every true excess over the label-permutation null is 0. For
each regime (spread 0.3: units differ little, the failure mode of the percentile interval;
1.0; 3.0: clearly separated units) and method (basic, BCa, percentile), ``--sets`` data sets
are analysed (n_null 100, n_boot 500, n_null_boot 10, level 0.95) and the share of intervals
holding the truth is printed per category, for the value and for the excess.

Run: ``.venv/bin/python bench/ci_coverage.py [--sets 100]`` (about 6 minutes with 100 sets on
the shared 2-core machine). The last line reads ``coverage of the true top-10 mean, units
differing little: basic 0.92, percentile 0.15, ratio 6.1x``.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import xarray as xr

from dissect.statistics import category_statistics

CATS = ["person head", "person part", "text", "food"]
PROBS = [0.5, 0.15, 0.3, 0.05]


def data_set(rng: np.random.Generator, spread: float, n_units: int = 200,
             n_images: int = 100) -> tuple[np.ndarray, xr.DataArray]:  # fmt: skip
    images, labels = [], []
    for i in range(n_images):
        for _ in range(rng.integers(1, 5)):
            images.append(f"i{i:03d}")
            labels.append(CATS[rng.choice(len(CATS), p=PROBS)])
    level = rng.normal(0, spread, size=n_units)
    values = level[:, None] + rng.normal(size=(n_units, len(labels)))
    assoc = xr.DataArray(
        values, dims=("unit", "region"),
        coords={"unit": np.arange(n_units), "image": ("region", images),
                "category": ("region", labels)},
        attrs={"layer": "synthetic"},
    )  # fmt: skip
    return level, assoc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=100, help="data sets per regime")
    args = ap.parse_args()
    k, rows = 10, []
    for spread in (0.3, 1.0, 3.0):
        for s in range(args.sets):
            level, assoc = data_set(np.random.default_rng(1000 + s), spread)
            truth = np.sort(level)[-k:].mean()
            for method in ("basic", "BCa", "percentile"):
                df = category_statistics(assoc, k=k, n_null=100, n_boot=500, seed=s,
                                         ci_method=method, n_null_boot=10)  # fmt: skip
                top = df[df.stat == f"top{k}_mean"]
                rows.append(pd.DataFrame({
                    "spread": spread, "method": method, "category": top.category,
                    "value_covers_truth": (top.ci_low <= truth) & (truth <= top.ci_high),
                    "excess_covers_0": (top.excess_ci_low <= 0) & (0 <= top.excess_ci_high),
                    "width": top.ci_high - top.ci_low,
                    "excess_width": top.excess_ci_high - top.excess_ci_low,
                }))  # fmt: skip
    d = pd.concat(rows, ignore_index=True)
    cols = ["value_covers_truth", "excess_covers_0", "width", "excess_width"]
    print(d.groupby(["spread", "method", "category"])[cols].mean().round(3).to_string())
    low = d[d.spread == 0.3].groupby("method")["value_covers_truth"].mean()
    ratio = low["basic"] / max(low["percentile"], 1e-9)
    print(f"coverage of the true top-10 mean, units differing little: basic {low['basic']:.2f}, "
          f"percentile {low['percentile']:.2f}, ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
