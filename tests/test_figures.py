"""Figures on synthetic tables and arrays: structure (axes, labels, order), NaN handling, PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from dissect import figures as F
from dissect.categories import NAMES
from dissect.errors import DataError
from dissect.metrics import nss

RNG = np.random.default_rng(0)
LAYERS = ["conv5_3", "conv1_1", "conv3_3"]  # deliberately not sorted: the given order is kept
CATS = ["text", "person head", "food", "animal part"]  # shuffled subset of NAMES
CATS_ORDERED = [n for n in NAMES if n in CATS]


def _ticks(labels) -> list[str]:
    return [t.get_text() for t in labels]


def _stats(stat: str = "top10_mean", model: str | None = None) -> pd.DataFrame:
    rows = []
    for i, layer in enumerate(LAYERS):
        for j, cat in enumerate(CATS):
            value = float(i * 10 + j) if stat == "count_above_T" else 1.0 + 0.1 * i + 0.01 * j
            rows.append(
                dict(
                    layer=layer,
                    category=cat,
                    stat=stat,
                    value=value,
                    null_mean=0.5,
                    null_q95=0.9,
                    p_value=0.01 if j == 0 else 0.5,
                    ci_low=value - 0.1,
                    ci_high=value + 0.1,
                    n_regions=20,
                )
            )
    df = pd.DataFrame(rows)
    if model is not None:
        df["model"] = model
    return df


def _cell_texts(ax) -> dict[tuple[int, int], str]:
    """Heatmap annotations keyed by (row, col)."""
    out = {}
    for t in ax.texts:
        x, y = t.get_position()
        out[(int(y - 0.5), int(x - 0.5))] = t
    return out


# ----------------------------------------------------------------------------- heatmaps


def test_heatmap_layers_order_labels_and_values():
    stats = pd.concat([_stats(), _stats("count_above_T")], ignore_index=True)
    fig = F.heatmap_layers(stats)
    assert isinstance(fig, Figure)
    ax, cbar = fig.axes
    assert _ticks(ax.get_xticklabels()) == CATS_ORDERED
    assert _ticks(ax.get_yticklabels()) == LAYERS
    assert ax.get_ylabel() == "layer"
    assert cbar.get_ylabel() == "top-10 mean NSS"
    texts = _cell_texts(ax)
    assert len(texts) == len(LAYERS) * len(CATS)
    # conv1_1 (row 1) × text (display col of "text"), value 1.1 + 0.01·index in CATS
    col = CATS_ORDERED.index("text")
    assert texts[(1, col)].get_text() == "1.10"
    assert not any(t.get_text().endswith("*") for t in ax.texts)


def test_heatmap_counts_are_integers():
    fig = F.heatmap_layers(_stats("count_above_T"), stat="count_above_T")
    ax, cbar = fig.axes
    assert cbar.get_ylabel() == "number of units with m > T"
    assert _cell_texts(ax)[(2, CATS_ORDERED.index("food"))].get_text() == "22"


def test_heatmap_nan_is_missing_not_zero():
    stats = _stats()
    stats.loc[(stats.layer == "conv1_1") & (stats.category == "food"), "value"] = np.nan
    stats.loc[(stats.layer == "conv5_3") & (stats.category == "text"), "value"] = 0.0
    stats = stats[~((stats.layer == "conv3_3") & (stats.category == "person head"))]  # absent
    fig = F.heatmap_layers(stats)
    ax = fig.axes[0]
    data = ax.collections[0].get_array()
    grid = np.ma.asarray(data).reshape(len(LAYERS), len(CATS))
    missing = {(1, CATS_ORDERED.index("food")), (2, CATS_ORDERED.index("person head"))}
    for r in range(len(LAYERS)):
        for c in range(len(CATS)):
            assert (grid.mask[r, c] if np.ma.is_masked(grid) else False) == ((r, c) in missing)
    texts = _cell_texts(ax)
    assert set(texts) == {(r, c) for r in range(3) for c in range(4)} - missing
    assert texts[(0, CATS_ORDERED.index("text"))].get_text() == "0.00"  # a real zero stays
    assert "undefined" in fig.get_supxlabel()


def test_heatmap_excess_marks_significance():
    fig = F.heatmap_layers(_stats(), excess=True)
    ax, cbar = fig.axes
    assert "null mean" in cbar.get_ylabel()
    texts = _cell_texts(ax)
    first = CATS_ORDERED.index(CATS[0])  # p = 0.01 in the first given category
    for r in range(len(LAYERS)):
        for c, cat in enumerate(CATS_ORDERED):
            t = texts[(r, c)]
            j = CATS.index(cat)
            expected = f"{1.0 + 0.1 * r + 0.01 * j - 0.5:+.2f}"
            if c == first:
                assert t.get_text() == expected + "*"
                assert t.get_fontweight() == "bold"
            else:
                assert t.get_text() == expected
    assert "p < 0.05" in fig.get_supxlabel()


def test_heatmap_stacked_models_get_row_labels():
    stats = pd.concat([_stats(model="vgg16"), _stats(model="lite0")], ignore_index=True)
    fig = F.heatmap_layers(stats)
    labels = _ticks(fig.axes[0].get_yticklabels())
    assert labels == [f"{m} · {layer}" for m in ("vgg16", "lite0") for layer in LAYERS]
    single = F.heatmap_layers(_stats(model="vgg16"))
    assert "model vgg16" in single.axes[0].get_title()


def test_heatmap_bad_input():
    with pytest.raises(DataError, match="unknown categories"):
        F.heatmap_layers(_stats().replace({"category": {"text": "texture"}}))
    with pytest.raises(DataError, match="missing columns"):
        F.heatmap_layers(_stats().drop(columns="value"))
    with pytest.raises(DataError, match="same"):
        F.heatmap_layers(pd.concat([_stats(), _stats()]))
    with pytest.raises(DataError, match="no rows with stat"):
        F.heatmap_layers(_stats(), stat="count_above_T")


def test_heatmap_k_keeps_k_order():
    ks = [0, 1, 2, "all"]
    rows = [
        dict(
            k=k,
            layer="head",
            category=c,
            stat="top10_mean",
            value=1.0 + i,
            null_mean=0.2,
            p_value=0.001,
        )
        for i, k in enumerate(ks)
        for c in ("plant", "person_head")  # '_' spelling is accepted
    ]
    fig = F.heatmap_k(pd.DataFrame(rows), excess=True)
    ax = fig.axes[0]
    assert _ticks(ax.get_yticklabels()) == ["0", "1", "2", "all"]
    assert _ticks(ax.get_xticklabels()) == ["person head", "plant"]
    assert ax.get_ylabel().startswith("k")
    assert _cell_texts(ax)[(3, 1)].get_text() == "+3.80*"


# ----------------------------------------------------------------------------- bars


def test_improvement_bars():
    ks = [1, 2, 3, "all"]
    df = pd.DataFrame(
        [
            dict(k=k, category=c, improvement_pct=10.0 * i - j)
            for i, k in enumerate(ks)
            for j, c in enumerate(CATS)
        ]
    )
    df.loc[(df.k == 2) & (df.category == "food"), "improvement_pct"] = np.nan
    fig = F.improvement_bars(df)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "% improvement of top-10 mean over pretrained"
    assert F.improvement_bars(df, top_k=5).axes[0].get_ylabel() == (
        "% improvement of top-5 mean over pretrained"
    )
    assert _ticks(ax.get_xticklabels()) == CATS_ORDERED
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1", "2", "3", "all"]
    assert len(ax.patches) == len(ks) * len(CATS) - 1  # the NaN bar is not drawn as 0 ...
    assert [t.get_text() for t in ax.texts] == ["n/a"]  # ... but marked
    assert any(np.allclose(line.get_ydata(), 0) for line in ax.get_lines())  # zero line
    heights = sorted(p.get_height() for p in ax.patches)
    expected = sorted(v for v in df.improvement_pct if np.isfinite(v))
    assert np.allclose(heights, expected)


def test_popout_bars_means_and_hue():
    models = ["itti", "gbvs", "readout_k0", "readout_kall"]
    dims = ["colour", "size"]
    nmm = pd.DataFrame(
        [
            dict(model=m, dimension=d, array=a, nmm=RNG.normal(i, 0.3))
            for i, m in enumerate(models)
            for d in dims
            for a in range(6)
        ]
    )
    nmm.loc[0, "nmm"] = np.nan
    fig = F.popout_bars(nmm, n_boot=100)
    ax = fig.axes[0]
    assert _ticks(ax.get_xticklabels()) == ["itti", "gbvs", "readout k0", "readout kall"]
    assert ax.get_ylabel() == "mean NMM (95% CI over arrays)"
    bars = [p for p in ax.patches if p.get_width() > 0]
    expected = nmm.groupby("model", sort=False)["nmm"].mean().loc[models]  # NaN-aware mean
    assert np.allclose([b.get_height() for b in bars], expected)
    assert "itti (1)" in fig.get_supxlabel()
    fig2 = F.popout_bars(nmm, hue="dimension", n_boot=100)
    assert [t.get_text() for t in fig2.axes[0].get_legend().get_texts()] == dims
    with pytest.raises(DataError, match="same"):
        F.popout_bars(pd.concat([nmm, nmm.head(1)]))


# ----------------------------------------------------------------------------- scatter


def test_inner_vs_output():
    table = pd.DataFrame(
        dict(
            category=NAMES,
            inner=np.linspace(1, 3, 12),
            os=np.linspace(0.5, 2, 12) ** 2,
            od=np.zeros(12),
            n_regions=30,
        )
    )
    table.loc[5, "os"] = np.nan
    fig = F.inner_vs_output(table, 0.7132, 0.00931)
    ax = fig.axes[0]
    assert ax.get_title() == "r_s = 0.71 (p = 0.009)"
    assert ax.get_xlabel() == "inner: top-10 mean NSS"
    assert F.inner_vs_output(table, 0.1, 0.5, top_k=5).axes[0].get_xlabel() == (
        "inner: top-5 mean NSS"
    )
    # the null-corrected inner saliency on x
    excess = table.assign(inner_excess=np.linspace(-1, 1, 12))
    ax3 = F.inner_vs_output(excess, 0.9, 0.001, x="inner_excess").axes[0]
    assert ax3.get_xlabel() == "inner: top-10 mean NSS − null mean"
    xs = np.concatenate([c.get_offsets()[:, 0] for c in ax3.collections])
    np.testing.assert_allclose(np.sort(xs), np.delete(np.linspace(-1, 1, 12), 5))
    assert ax.get_ylabel() == "output saliency (OS)"
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == sorted(n for i, n in enumerate(NAMES) if i != 5)
    assert NAMES[5] in fig.get_supxlabel()
    assert sum(len(c.get_offsets()) for c in ax.collections) == 11
    fig2 = F.inner_vs_output(table, -0.1, 1e-5, y="od")
    assert fig2.axes[0].get_title() == "r_s = -0.10 (p = 1.0e-05)"
    assert fig2.axes[0].get_ylabel() == "output difference (OD)"


# ----------------------------------------------------------------------------- maps


def test_upsample_is_bilinear_half_pixel():
    """torch ``interpolate(bilinear, align_corners=False)`` semantics: half-pixel centres, edge
    clamping. The 1-D case by hand; 2-D against OpenCV's INTER_LINEAR (same arithmetic, and much
    cheaper to import in a test than torch)."""
    import cv2  # opencv-contrib-python-headless is a pinned dependency: no skip
    up = F.upsample(np.array([[0.0, 1.0]]), (1, 4))
    assert np.allclose(up, [[0.0, 0.25, 0.75, 1.0]])
    a = RNG.random((5, 7))
    for size in [(30, 40), (5, 7), (3, 4), (11, 13)]:
        ref = cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        assert np.allclose(F.upsample(a, size), ref, atol=1e-12)


def test_panel_nss_by_hand():
    """The NSS in a unit panel's title is Eq. 1 at the fixations inside the region: mean and
    population std over the whole map, fixation pixel (rint(y), rint(x))."""
    m = np.zeros((4, 4))
    m[0, 0] = 4.0  # mean 0.25, population std sqrt(15)/4
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    pts = np.array([[0.2, -0.3], [1.0, 1.0], [3.0, 3.0]])  # (x, y); the last is outside
    expected = ((4 - 0.25) + (0 - 0.25)) / 2 / (np.sqrt(15) / 4)  # 1.807 (sample std: 1.75)
    image = np.zeros((4, 4, 3), np.uint8)
    fig = F.unit_overlays(image, pts, mask, {"u": m, "flat": np.ones((4, 4))})
    titles = [ax.get_title() for ax in fig.axes[1:3]]
    assert titles == [f"u\nNSS = {expected:.2f}", "flat\nNSS = n/a"]
    fig = F.unit_overlays(image, pts[2:], mask, {"u": m})  # no fixation in the region
    assert fig.axes[1].get_title() == "u\nNSS = n/a"


def _scene(h: int = 60, w: int = 80):
    image = RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:30, 20:50] = True
    fix = np.array([[25.0, 15.0], [40.0, 20.0], [70.0, 50.0]])
    return image, fix, mask


def test_unit_overlays_titles_and_nss():
    image, fix, mask = _scene()
    maps = {"u3": RNG.random((6, 8)), "u17": RNG.random((3, 4)), "u5": np.ones((6, 8))}
    fig = F.unit_overlays(image, fix, mask, maps, "image 1 · text", nss={"u17": 2.5})
    axes = fig.axes
    assert len(axes) == 1 + 3 + 1  # image, three units, colour bar
    assert axes[0].get_title() == "image 1 · text"
    inside = mask[np.rint(fix[:, 1]).astype(int), np.rint(fix[:, 0]).astype(int)]
    expected = nss(F.upsample(maps["u3"], (60, 80)), fix[inside])  # Eq. 1 on the shown map
    assert axes[1].get_title() == f"u3\nNSS = {expected:.2f}"
    assert axes[2].get_title() == "u17\nNSS = 2.50"  # given value wins
    assert axes[3].get_title() == "u5\nNSS = n/a"  # constant map
    assert axes[1].images[1].get_array().shape == (60, 80)  # upsampled to the image
    with pytest.raises(DataError, match="mask shape"):
        F.unit_overlays(image, fix, mask[:-1], maps)
    with pytest.raises(DataError, match="outside"):
        F.unit_overlays(image, fix + 100, mask, maps)
    with pytest.raises(DataError, match="non-finite"):
        F.unit_overlays(image, fix, mask, {"u": np.full((3, 3), np.nan)})


def test_unit_overlay_grid_rows():
    image, fix, mask = _scene()
    rows = [
        dict(
            image=image,
            fixations=fix,
            region_mask=mask,
            title="a",
            unit_maps={"u1": RNG.random((6, 8)), "u2": RNG.random((6, 8))},
        ),
        dict(
            image=image,
            fixations=fix,
            region_mask=mask,
            title="b",
            unit_maps={"u9": RNG.random((6, 8))},
        ),
    ]
    fig = F.unit_overlay_grid(rows)
    grid = fig.axes[:-1]
    assert len(grid) == 2 * 3
    assert [ax.get_title() for ax in grid[::3]] == ["a", "b"]
    assert not grid[5].axison  # the second row has one unit only
    with pytest.raises(DataError, match="rows\\[1\\].*unit_maps"):
        F.unit_overlay_grid([rows[0], {k: v for k, v in rows[1].items() if k != "unit_maps"}])


def test_popout_examples_grid():
    image, _, mask = _scene(32, 32)
    models = ["itti", "spectral_residual", "readout_kall"]
    arrays = [
        (image, mask, {m: RNG.random((8, 8)) for m in models}),
        (image, mask, {m: RNG.random((8, 8)) for m in models[:2]}),
    ]
    fig = F.popout_examples(arrays, labels=["colour", "size"])
    axes = np.array(fig.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[0]] == [
        "array",
        "itti",
        "spectral residual",
        "readout kall",
    ]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["colour", "size"]
    assert [t.get_text() for t in axes[1, 3].texts] == ["n/a"]
    assert axes[0, 1].images[0].get_array().shape == (32, 32)


def test_popout_best_units():
    image, _, mask = _scene(32, 32)
    rows = [
        dict(
            image=image,
            mask=mask,
            label="colour",
            maps={"conv1": RNG.random((16, 16)), "conv5": RNG.random((2, 2))},
            units={"conv1": 7, "conv5": 311},
            nmm={"conv1": 1.234, "conv5": 0.5},
        )
    ]
    fig = F.popout_best_units(rows)
    assert [ax.get_title() for ax in fig.axes] == [
        "array",
        "conv1\nunit 7 · NMM 1.23",
        "conv5\nunit 311 · NMM 0.50",
    ]
    assert fig.axes[0].get_ylabel() == "colour"


def test_task_maps_order():
    image, fix, _ = _scene()
    maps = {"sp": RNG.random((7, 7)), "pt": RNG.random((7, 7)), "sr": RNG.random((7, 7))}
    fig = F.task_maps(image, RNG.random((60, 80)), maps, fixations=fix)
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == [
        "image",
        "fixation density",
        F.TASK_TITLES["pt"],
        F.TASK_TITLES["sr"],
        F.TASK_TITLES["sp"],
    ]
    assert len(fig.axes) == 6  # + colour bar


# ----------------------------------------------------------------------------- training


def test_confusion_matrix():
    labels = ["indoor", "outdoor", "closeup"]
    cm = pd.DataFrame([[5, 1, 0], [2, 2, 0], [0, 0, 0]], index=labels, columns=labels)
    fig = F.confusion(cm)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert _ticks(ax.get_xticklabels()) == labels and _ticks(ax.get_yticklabels()) == labels
    assert ax.get_title() == "accuracy = 0.700"
    assert _cell_texts(ax)[(0, 0)].get_text() == "5"
    norm = F.confusion(cm, normalize=True).axes[0]
    texts = _cell_texts(norm)
    assert texts[(1, 0)].get_text() == "0.50"
    assert not any(r == 2 for r, _ in texts)  # an empty true class is missing, not 0
    with pytest.raises(DataError, match="non-negative"):
        F.confusion(-cm)


def test_training_curves():
    hist = pd.DataFrame(
        [
            dict(k=k, epoch=e, train_loss=1 / (e + 1), val_nss=1 + 0.1 * e)
            for k in (0, 3, "all")
            for e in (2, 0, 1)
        ]
    )
    fig = F.training_curves(hist)
    loss_ax, nss_ax = fig.axes
    # the readouts minimise −NSS: the loss axis says so
    assert (loss_ax.get_ylabel(), nss_ax.get_ylabel()) == ("training loss (−NSS)", "validation NSS")
    assert F.training_curves(hist, loss_label="cross-entropy").axes[0].get_ylabel() == (
        "cross-entropy"
    )
    assert len(loss_ax.get_lines()) == 3 and len(nss_ax.get_lines()) == 3
    assert list(loss_ax.get_lines()[0].get_xdata()) == [0, 1, 2]  # sorted by epoch
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["0", "3", "all"]
    with pytest.raises(DataError, match="missing columns"):
        F.training_curves(hist.drop(columns="val_nss"))


def test_training_curves_draw_one_dashed_line_per_seed():
    hist = pd.DataFrame([dict(model=m, seed=s, epoch=e, train_loss=-e - s, val_nss=e + s)
                         for m in ("k0", "k1") for s in (0, 5) for e in (1, 2, 3)])
    fig = F.training_curves(hist)
    loss_ax, _ = fig.axes
    lines = loss_ax.get_lines()
    assert len(lines) == 4  # 2 models × 2 seeds
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", "-", "--"]
    assert lines[1].get_color() == lines[0].get_color() != lines[2].get_color()
    assert list(lines[1].get_ydata()) == [-6, -7, -8]  # model k0, seed 5
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["k0", "k1"]  # one per model
    assert "seed 0 -" in fig._suptitle.get_text() and "seed 5 --" in fig._suptitle.get_text()


def test_improvement_bars_whiskers_span_low_to_high():
    imp = pd.DataFrame([dict(k=k, category=c, mean=10.0 * (i + 1), lo=5.0 * (i + 1),
                             hi=12.0 * (i + 1)) for k in ("1", "all")
                        for i, c in enumerate(CATS)])
    fig = F.improvement_bars(imp, value="mean", low="lo", high="hi")
    ax = fig.axes[0]
    bars = [r for r in ax.patches if r.get_height() != 0]
    assert sorted(b.get_height() for b in bars) == sorted(imp["mean"])
    segs = [seg for col in ax.collections for seg in col.get_segments()]
    spans = sorted((round(min(y for _, y in seg), 6), round(max(y for _, y in seg), 6))
                   for seg in segs if len(seg) == 2 and seg[0][0] == seg[1][0])
    assert spans == sorted(zip(imp["lo"], imp["hi"], strict=True))
    with pytest.raises(DataError, match="both"):
        F.improvement_bars(imp, value="mean", low="lo")


# ----------------------------------------------------------------------------- saving


def test_save_figure_png_dpi(tmp_path):
    small = _stats()
    small = small[small.layer.isin(LAYERS[:2]) & small.category.isin(CATS[:2])]
    sizes = {}
    for dpi in (200, 300):
        fig = F.heatmap_layers(small)
        w, h = fig.get_size_inches()
        path = F.save_figure(fig, tmp_path / f"sub/h{dpi}.png", dpi=dpi)
        assert path.stat().st_size > 1000
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert np.allclose(im.info["dpi"], (dpi, dpi), atol=0.01)
            sizes[dpi] = np.array(im.size)
            assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something is drawn
        # tight bounding box: at most the figure plus the 0.05 in padding on each side
        assert np.all(sizes[dpi] <= (np.array([w, h]) + 0.1) * dpi + 1)
        assert np.all(sizes[dpi] > 0.6 * np.array([w, h]) * dpi)
    assert np.allclose(sizes[300] / sizes[200], 1.5, rtol=0.02)
    with pytest.raises(DataError, match="PNG"):
        F.save_figure(fig, tmp_path / "h.pdf")
    with pytest.raises(DataError, match="dpi"):
        F.save_figure(fig, tmp_path / "h.png", dpi=72)


def test_save_figure_closes_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.add_subplot().plot([0, 1])
    assert plt.fignum_exists(fig.number)
    F.save_figure(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(fig.number)


def test_stat_labels_follow_top_k():
    assert F.stat_label("top10_mean") == "top-10 mean NSS"
    assert F.stat_label("top5_mean") == "top-5 mean NSS"
    assert F.stat_label("count_above_T") == "number of units with m > T"
    assert F.stat_label("other") == "other"
    stats = _stats().assign(stat="top5_mean")
    assert F.heatmap_layers(stats, "top5_mean").axes[1].get_ylabel() == "top-5 mean NSS"


# ----------------------------------------------------------------------------- the stage


def test_stage_k_labels():
    from dissect.stages.figures import deepest_numeric, k_label

    assert [k_label(m) for m in ("k0", "k1", "k12", "kall")] == ["0", "1", "12", "all"]
    # Fig. 5 shows the deepest numerically tuned readout, whatever train.ks holds
    assert deepest_numeric(["k1", "k6", "kall"]) == "k6"
    assert deepest_numeric(["k2", "k10", "k5"]) == "k10"
    assert deepest_numeric(["kall"]) == "kall"
    assert deepest_numeric([]) is None


def _category_stats(models_k: dict, layers: list[str], top: str,
                    seeds=(0, 1)) -> pd.DataFrame:
    """A per-seed statistics table as the statistics stage writes it (pt without a seed)."""
    rows = []
    for model, k in models_k.items():
        for seed in [None] if model == "pt" else seeds:
            for layer in layers if model == "pt" else layers[-1:]:
                for i, cat in enumerate(CATS):
                    for stat in (top, "count_above_T"):
                        v = 1.0 + i + (0.0 if model in ("pt", "k0") else 0.1 * (seed + 1))
                        rows.append(dict(model=model, seed=seed, k=k, layer=layer, category=cat,
                                         stat=stat, value=v, null_mean=0.5, p_value=0.01,
                                         excess=v - 0.5, excess_ci_low=v - 0.7,
                                         excess_ci_high=v - 0.3))
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    return df


@pytest.mark.parametrize("top_k, ks", [(10, [0, 1, "all"]), (5, [0, 2])])
def test_stage_writes_top_k_names_and_all_label(tmp_path, monkeypatch, top_k, ks):
    """Changing stats.top_k renames the Table 2/3 figures; the all-stages readout is "all" on
    Table 3, Fig. 4 and the training curves (never its number of stages); a failing run leaves
    the committed figures folder as it was."""
    from dissect.config import load_params
    from dissect.stages import figures as stage
    from dissect.stages.statistics import write_statistics_tables

    params_file = Path(__file__).resolve().parents[1] / "pipelines" / "params.yaml"
    params = load_params(params_file, {"work": str(tmp_path / "work"),
                                       "results": str(tmp_path / "results"),
                                       "stats.top_k": top_k, "train.ks": ks,
                                       "train.seeds": [0, 1], "scene.seeds": [0, 1],
                                       "backbone.layers": LAYERS})
    top = f"top{top_k}_mean"
    models_k = {"pt": -1, **{f"k{k}": (18 if k == "all" else k) for k in ks}}
    tables = tmp_path / "results" / "tables"
    write_statistics_tables(_category_stats(models_k, LAYERS, top), tables / "statistics",
                            top=top, last=LAYERS[-1],
                            kw=dict(k=top_k, n_null=10, n_boot=10, threshold=1.5))
    pd.DataFrame([dict(model=f"k{k}", seed=s, epoch=e, train_loss=-e, val_nss=e)
                  for k in ks for s in (0, 1) for e in (1, 2)]).to_csv(
        tables / "training_curves.csv", index=False)
    labels = ["all" if k == "all" else f"k{k}" for k in ks]  # as the inner-output stage names
    (tables / "inner_output").mkdir()
    pd.DataFrame([dict(seed=s, model=m, category=c, os=1.0 + i, od=0.1, inner=2.0 - 0.1 * i,
                       inner_excess=0.1 * i)
                  for s in (0, 1) for m in labels for i, c in enumerate(CATS)]
                 ).to_csv(tables / "inner_output" / "inner_output.csv", index=False)
    pd.DataFrame([dict(seed=s, model=m, r_s=-1.0, p_value=0.01, r_s_excess=1.0,
                       p_value_excess=0.01) for s in (0, 1) for m in labels]).to_csv(
        tables / "inner_output" / "inner_output_spearman.csv", index=False)
    drawn = {}

    def spy(name):
        real = getattr(F, name)

        def wrapper(df, *a, **kw):
            drawn.setdefault(name, []).append(df.copy())
            return real(df, *a, **kw)
        return wrapper

    for name in ("heatmap_k", "improvement_bars", "training_curves"):
        monkeypatch.setattr(F, name, spy(name))
    monkeypatch.setattr(F, "unit_overlay_grid", lambda rows, title: F.confusion(
        pd.DataFrame([[1]], index=["a"], columns=["a"])))
    monkeypatch.setattr(stage, "best_region_rows", lambda *a, **kw: [])
    paper = tmp_path / "results" / "figures" / "paper"
    written = stage.paper_figures(params, paper.with_name("new"))
    expected = {f"table2_top{top_k}.png", f"table2_top{top_k}_excess.png", "table2_count.png",
                f"table3_top{top_k}.png", f"table3_top{top_k}_excess.png",
                "fig4_improvement.png", "fig4_improvement_excess.png",
                "fig3_units_pretrained.png", "fig5_units_finetuned.png", "training_curves.png",
                *(f"inner_vs_output_{m}.png" for m in labels),
                *(f"inner_vs_output_excess_{m}.png" for m in labels)}
    assert set(written) == expected
    assert {p.name for p in paper.with_name("new").iterdir()} == expected
    k_labels = [str(k) for k in ks]
    assert list(pd.unique(drawn["heatmap_k"][0]["k"])) == k_labels
    assert list(pd.unique(drawn["improvement_bars"][0]["k"])) == k_labels[1:]
    assert list(pd.unique(drawn["training_curves"][0]["model"])) == labels
    # Table 3's heatmap shows the mean over the two seeds (values +0.1 and +0.2: +0.15)
    heat = drawn["heatmap_k"][0]
    row = heat[(heat["k"] == k_labels[1]) & (heat["category"] == CATS[0]) & (heat["stat"] == top)]
    assert row["value"].iloc[0] == pytest.approx(1.15)
    heat0 = heat[(heat["k"] == "0") & (heat["stat"] == top)]
    assert heat0["value"].tolist() == [1.0 + i for i in range(len(CATS))]

    # the stage replaces the folder atomically: an error keeps the committed figures
    paper.mkdir()
    (paper / "committed.png").write_bytes(b"old")

    def boom(*a, **kw):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(stage, "paper_figures", boom)
    with pytest.raises(RuntimeError):
        stage.run_figures(params)
    assert [p.name for p in paper.iterdir()] == ["committed.png"]
    assert sorted(p.name for p in paper.parent.iterdir()) == ["new", "paper"]
