"""Tests of dissect.tables: Markdown formatter, CSV/Markdown writing, Table 2/3 pivots."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from dissect.errors import DataError
from dissect.tables import (
    format_cell,
    format_interval,
    markdown_table,
    pivot_k,
    pivot_layers,
    pivot_models,
    stats_caption,
    topk_stat,
    write_table,
)


def stats_rows(layer, k, cells):
    """cells: {category: (value, null_mean, p)} for top10_mean; count rows derived."""
    rows = []
    for cat, (v, n, p) in cells.items():
        rows.append({"layer": layer, "k": k, "category": cat, "stat": "top10_mean", "value": v,
                     "null_mean": n, "p_value": p})  # fmt: skip
        rows.append({"layer": layer, "k": k, "category": cat, "stat": "count_above_T",
                     "value": np.round(10 * v), "null_mean": 10 * n, "p_value": p})  # fmt: skip
    return rows


STATS = pd.DataFrame(
    stats_rows("conv5_3", 0, {"text": (2.0, 1.5, 0.2), "person head": (2.414, 1.618, 0.005)})
    + stats_rows(
        "conv4_3",
        0,
        {
            "text": (1.0, 0.9, 0.04),
            "food": (np.nan, np.nan, np.nan),
            "person head": (1.5, 1.4, 0.5),
        },
    )  # fmt: skip
)


def parse_markdown(text):
    lines = text.strip().splitlines()
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in lines]
    return split[0], split[1], split[2:]


def test_markdown_table_format():
    df = pd.DataFrame({"name": ["a|b", "c"], "x": [1.23456, np.nan], "n": [3, 10]})
    header, rule, body = parse_markdown(markdown_table(df))
    assert header == ["name", "x", "n"]
    assert body == [[r"a\|b", "1.235", "3"], ["c", "", "10"]]
    assert rule[0].startswith("---") and rule[1].endswith(":")  # numeric right-aligned
    lines = markdown_table(df).splitlines()
    assert len({len(line) for line in lines}) == 1  # aligned columns
    indexed = markdown_table(df.set_index("name"), floatfmt=".1f")
    assert parse_markdown(indexed)[0] == ["name", "x", "n"]
    assert parse_markdown(indexed)[2][0] == [r"a\|b", "1.2", "3"]


def test_write_table_roundtrip(tmp_path):
    df = pd.DataFrame({"category": ["text", "food"], "value": [1 / 3, 2.0]})
    csv, md = write_table(df, tmp_path / "sub" / "table2")
    assert csv.name == "table2.csv" and md.name == "table2.md"
    back = pd.read_csv(csv)
    pd.testing.assert_frame_equal(back, df)  # full precision, no index column
    assert "0.333" in md.read_text() and md.read_text().startswith("| category")
    wide = pivot_layers(STATS)
    csv, _ = write_table(wide, tmp_path / "wide")
    assert list(pd.read_csv(csv).columns)[0] == "layer"  # meaningful index kept


def test_format_cell():
    assert format_cell(2.414, 1.618, 0.005, count=False) == "2.41* (1.62)"
    assert format_cell(2.414, 1.618, 0.05, count=False) == "2.41 (1.62)"  # p < 0.05 strictly
    assert format_cell(37.0, 5.24, 0.01, count=True) == "37* (5.2)"
    assert format_cell(np.nan, 1.0, 0.01, count=False) == ""
    assert format_cell(2.0, 1.0, 0.01, count=False, show_null=False, digits=1) == "2.0*"


def test_pivot_layers():
    wide = pivot_layers(STATS, "top10_mean")
    assert list(wide.index) == ["conv5_3", "conv4_3"]  # order of appearance
    assert list(wide.columns) == ["person head", "text", "food"]  # display order, present only
    assert wide.loc["conv5_3", "person head"] == "2.41* (1.62)"
    assert wide.loc["conv5_3", "text"] == "2.00 (1.50)"
    assert wide.loc["conv4_3", "text"] == "1.00* (0.90)"
    assert wide.loc["conv4_3", "food"] == "" and wide.loc["conv5_3", "food"] == ""
    counts = pivot_layers(STATS, "count_above_T")
    assert counts.loc["conv5_3", "person head"] == "24* (16.2)"
    with pytest.raises(DataError, match="no rows"):
        pivot_layers(STATS, "top5_mean")
    with pytest.raises(DataError, match="several rows"):
        pivot_layers(pd.concat([STATS, STATS]))


def test_pivot_k():
    by_k = pd.DataFrame(
        stats_rows("conv5_3", 5, {"text": (3.0, 1.0, 0.01)})
        + stats_rows("conv5_3", 0, {"text": (2.0, 1.5, 0.2), "plant": (1.0, 1.0, 0.7)})
        + stats_rows("conv4_3", 0, {"text": (1.0, 1.0, 0.7)})
    )
    with pytest.raises(DataError, match="layer"):
        pivot_k(by_k)
    wide = pivot_k(by_k, layer="conv5_3")
    assert list(wide.index) == [0, 5] and wide.index.name == "k"
    assert list(wide.columns) == ["text", "plant"]
    assert wide.loc[5, "text"] == "3.00* (1.00)" and wide.loc[5, "plant"] == ""
    assert pivot_k(by_k[by_k.layer == "conv4_3"]).shape == (1, 1)


def with_excess(df: pd.DataFrame) -> pd.DataFrame:
    """Excess columns as the statistics table has them: value − null mean, interval ± 0.25."""
    out = df.assign(excess=df.value - df.null_mean)
    return out.assign(excess_ci_low=out.excess - 0.25, excess_ci_high=out.excess + 0.25,
                      ci_method="basic", ci_level=0.95, null="labels",
                      excess_ci_used="basic")  # fmt: skip


def test_format_interval():
    assert format_interval(0.794, 0.521, 1.104, 0.01) == "0.79* [0.52, 1.10]"
    assert format_interval(0.794, 0.521, 1.104, 0.2) == "0.79 [0.52, 1.10]"
    assert format_interval(0.794, np.nan, 1.104) == "0.79 [n/a]"
    assert format_interval(-3.25, -5.0, -1.5, count=True) == "-3.2 [-5.0, -1.5]"
    assert format_interval(np.nan, 0.0, 1.0) == ""


def test_pivots_follow_top_k():
    """The default statistic is the table's top-k mean, whatever k (stats.top_k)."""
    top5 = STATS.assign(stat=STATS.stat.replace({"top10_mean": "top5_mean"}))
    assert topk_stat(top5) == "top5_mean"
    pd.testing.assert_frame_equal(pivot_layers(top5), pivot_layers(STATS, "top10_mean"))
    with pytest.raises(DataError, match="top-k"):
        pivot_layers(pd.concat([STATS, top5]))


def test_excess_cells():
    wide = pivot_layers(with_excess(STATS), cells="excess")
    # person head at conv5_3: 2.414 − 1.618 = 0.796, p = 0.005
    assert wide.loc["conv5_3", "person head"] == "0.80* [0.55, 1.05]"
    assert wide.loc["conv4_3", "text"] == "0.10* [-0.15, 0.35]"
    assert wide.loc["conv4_3", "food"] == ""
    counts = pivot_layers(with_excess(STATS), "count_above_T", cells="excess")
    assert counts.loc["conv5_3", "text"] == "5.0 [4.8, 5.2]"  # 20 − 15 ± 0.25, one decimal
    with pytest.raises(DataError, match="excess"):
        pivot_layers(STATS, cells="excess")
    with pytest.raises(DataError, match="cells"):
        pivot_layers(STATS, cells="ci")


def test_pivot_k_by_display_name():
    """Rows in ascending k, labelled by the model's display name: "all", never its k = 18."""
    by_k = pd.DataFrame(
        stats_rows("conv5_3", 18, {"text": (4.0, 1.0, 0.01)})
        + stats_rows("conv5_3", 0, {"text": (2.0, 1.5, 0.2)})
        + stats_rows("conv5_3", 1, {"text": (3.0, 1.0, 0.01)})
    )
    by_k["model"] = by_k.k.map({0: "k0", 1: "k1", 18: "all"})
    wide = pivot_k(by_k)
    assert list(wide.index) == ["k0", "k1", "all"] and wide.index.name == "model"
    assert wide.loc["all", "text"] == "4.00* (1.00)"
    md = markdown_table(wide)
    assert "| all " in md and "18" not in md
    bad = by_k.assign(model="k1")
    with pytest.raises(DataError, match="several k"):
        pivot_k(bad)


def test_pivot_models_table7():
    rows = []
    for model, shift in (("pt", 0.0), ("sp", 0.5), ("sr", 0.1)):
        for r in stats_rows("head", -1, {"text": (1.0 + shift, 0.9, 0.04),
                                         "person head": (2.0 + shift, 1.0, 0.5)}):  # fmt: skip
            rows.append({**r, "model": model})
    t7 = pd.DataFrame(rows)
    wide = pivot_models(t7)
    assert list(wide.index) == ["person head", "text"] and wide.index.name == "category"
    assert list(wide.columns) == [f"{s} {m}" for s in ("top10_mean", "count_above_T")
                                  for m in ("pt", "sp", "sr")]  # fmt: skip
    assert wide.loc["text", "top10_mean sp"] == "1.50* (0.90)"
    assert wide.loc["person head", "count_above_T sr"] == "21 (10.0)"
    assert wide.shape == (2, 6)  # 12 tidy rows → 2 × 6 cells


def test_caption_and_write_with_caption(tmp_path):
    df = with_excess(STATS)
    df.loc[0, "excess_ci_used"] = "BC"
    text = stats_caption(df, "top10_mean", cells="excess", n_null=200, n_boot=1000,
                         tidy="category_statistics.csv")  # fmt: skip
    assert "95% basic interval from 1000 image-bootstrap resamples" in text
    assert "200 permutations, category labels permuted across regions" in text
    assert "1 cell(s) BC" in text and "`category_statistics.csv`" in text
    value = stats_caption(df, "count_above_T", n_null=200)
    assert value.startswith("Cells: number of units with NSS > T") and "null mean" in value
    tidy = pd.DataFrame({"category": ["text"], "value": [1.0]})
    csv, md = write_table(tidy, tmp_path / "t7", caption=text, markdown=pivot_layers(STATS))
    pd.testing.assert_frame_equal(pd.read_csv(csv), tidy)  # the CSV stays tidy
    lines = md.read_text().strip().splitlines()
    assert lines[0].startswith("| layer") and lines[-1] == text and lines[-2] == ""
