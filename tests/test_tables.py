"""Tests of dissect.tables: Markdown formatter, CSV/Markdown writing, Table 2/3 pivots."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from dissect.errors import DataError
from dissect.tables import format_cell, markdown_table, pivot_k, pivot_layers, write_table


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
