"""The unit browser: per-unit profiles, pictures, the static site and the report's HTML.

The browser tests (marker ``browser``) open the generated pages in headless Chromium; they run in
CI (``.ci/run`` installs Debian's chromium and chromium-driver and sets
``DISSECT_REQUIRE_BROWSER=1``, which turns a missing browser into a failure instead of a skip).
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import numpy as np
import pytest
import xarray as xr

from dissect.errors import DataError
from dissect.report_html import markdown_to_html, write_report_html
from dissect.site import ModelPage, SiteLayer, SiteOptions, build_site, slug
from dissect.site_images import category_bars_svg, colour_map, overlay, thumbnail
from dissect.unit_profiles import unit_profiles

CATS = ["person head", "text", "vehicle"]


# --------------------------------------------------------------------------- fixture


class _Dataset:
    """Images (H×W RGB), fixations, a size per image: what the site reads of OSIE."""

    def __init__(self, ids, rng):
        self.ids = list(ids)
        self.size = {i: (60 + 4 * k, 80) for k, i in enumerate(self.ids)}
        self.images = {i: rng.integers(0, 255, (*self.size[i], 3), dtype=np.uint8)
                       for i in self.ids}
        self.pts = {i: np.column_stack([rng.uniform(0, 79, 12), rng.uniform(0, s[0] - 1, 12)])
                    for i, s in self.size.items()}

    def __getitem__(self, i):
        h, w = self.size[i]
        return SimpleNamespace(height=h, width=w)

    def load_image(self, i):
        return self.images[i]

    def points(self, i, drop_first=False):
        return self.pts[i]


class _Regions:
    """Two regions per image: region 1 the left half, region 2 the right half."""

    def __init__(self, dataset):
        self.dataset = dataset

    def instance_mask(self, i):
        h, w = self.dataset.size[i]
        m = np.ones((h, w), dtype=np.int32)
        m[:, w // 2:] = 2
        return m


def _assoc(rng, n_units, ids, *, nan_frac=0.1):
    """Assoc(u, r) with two regions per image, categories cycling through CATS."""
    images = [i for i in ids for _ in (1, 2)]
    rids = [r for _ in ids for r in (1, 2)]
    cats = [CATS[k % len(CATS)] for k in range(len(images))]
    v = rng.normal(0.5, 1.0, (n_units, len(images)))
    v[rng.random(v.shape) < nan_frac] = np.nan
    v[0, :] = np.nan  # a unit undefined everywhere
    return xr.DataArray(v, dims=("unit", "region"),
                        coords={"unit": np.arange(n_units), "image": ("region", images),
                                "category": ("region", cats), "region_id": ("region", rids)})


@pytest.fixture
def site_inputs():
    rng = np.random.default_rng(3)
    ids = [f"{1000 + k}" for k in range(8)]
    ds = _Dataset(ids, rng)
    maps = rng.random((len(ids), 6, 5, 7)).astype(np.float32)
    ft_maps = 10 + rng.random((len(ids), 6, 5, 7)).astype(np.float32)  # another range

    def reader(m):
        return lambda images, units: m[np.ix_([ids.index(i) for i in images], list(units))]

    arrays = []
    for k, dim in enumerate(["colour", "size", "conjunction"]):
        mask = np.zeros((40, 50), bool)
        mask[5 + 5 * k:15 + 5 * k, 10:22] = True
        arrays.append(SimpleNamespace(id=f"{dim}_000", dimension=dim, mask=mask,
                                      image=rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)))
    pop_maps = rng.random((len(arrays), 6, 4, 5))

    pt = SiteLayer(model="pt", model_label="trunk (pretrained)", group="Pretrained trunk",
                   layer="block1", assoc=_assoc(rng, 6, ids), maps=reader(maps),
                   popout_maps=lambda: pop_maps)
    ft = SiteLayer(model="k1_s0", model_label="readout k1, seed 0", group="Fine-tuned",
                   layer="block1", assoc=_assoc(rng, 6, ids), maps=reader(ft_maps),
                   before=("pt", "block1"))
    plain = SiteLayer(model="pt", model_label="trunk (pretrained)", group="Pretrained trunk",
                      layer="block2", assoc=_assoc(rng, 4, ids), maps=None)
    return SimpleNamespace(ids=ids, ds=ds, regions=_Regions(ds), maps=maps, ft_maps=ft_maps,
                           layers=[pt, ft, plain], arrays=arrays, pop_maps=pop_maps)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("http:", "https:", "#", "data:")):
                self.refs.append(a[key])


def _refs(page: Path) -> list[Path]:
    p = _Refs()
    p.feed(page.read_text())
    return [(page.parent / r.split("#")[0]).resolve() for r in p.refs]


def _build(tmp_path, inp, **kw):
    kw.setdefault("min_regions", 1)
    opts = SiteOptions(top_k=2, n_images=3, thumb_width=40, n_null=50, seed=0, n_popout=2,
                       example_images=inp.ids[:2], **kw)
    report = tmp_path / "report.html"
    report.write_text("<html></html>")
    model = ModelPage(name="toy", label="toy model",
                      scores=__import__("pandas").DataFrame(
                          {"metric": ["nss", "ig_explained"], "value": [1.2, 0.3],
                           "ci_low": [1.0, 0.2], "ci_high": [1.4, 0.4], "n_images": [8, 8]}),
                      predict=lambda i: inp.ds.images[i][..., 0].astype(float),
                      units=[("pt/block1/5", "a large readout weight")],
                      layers=[("pt", "block1")])
    return build_site(tmp_path / "site", inp.layers, dataset=inp.ds, regions=inp.regions,
                      opts=opts, models=[model], report=report, progress=False,
                      popout_arrays=inp.arrays,
                      density=lambda i: inp.ds.images[i][..., 1].astype(float))


# --------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("min_regions", [1, 3])
def test_unit_profiles_match_a_loop(min_regions):
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(15)]
    a = _assoc(rng, 7, ids, nan_frac=0.3)
    T, B = 0.6, 40
    prof = unit_profiles(a, threshold=T, n_null=B, seed=5, min_regions=min_regions)
    v = a.values
    cats = np.asarray(a["category"].values)
    # reference: plain loops over units, categories and relabellings; the permutations are
    # category_statistics' stream (the first of two spawned generators), one
    # rng.permutation per replicate over the regions some unit is defined on
    used = np.isfinite(v).any(axis=0)
    rng2 = np.random.default_rng(5).spawn(2)[0]
    perms = [rng2.permutation(cats[used]) for _ in range(B)]

    def means_of(values, labels):
        out = {}
        for c in CATS:
            vals = values[(labels == c) & np.isfinite(values)]
            out[c] = (vals.mean(), vals.size) if vals.size else (np.nan, 0)
        return out

    n_checked = 0
    for u in range(v.shape[0]):
        m = means_of(v[u], cats)
        row = prof.table.iloc[u]
        assert row["n_above_T"] == sum(1 for x, _ in m.values() if x > T)
        ok = [c for c in CATS if m[c][1] >= min_regions]
        if not ok:
            assert row["best_category"] == "" and np.isnan(row["nss"]) and np.isnan(row["rank"])
            continue
        n_checked += 1
        best = max(ok, key=lambda c: m[c][0])
        assert row["best_category"] == best
        assert row["nss"] == pytest.approx(m[best][0])
        assert row["n_defined"] == m[best][1]
        others = [means_of(v[w], cats)[best] for w in range(v.shape[0]) if w != u]
        assert row["rank"] == 1 + sum(1 for x, n in others if n >= min_regions and x > m[best][0])
        nulls, per_cat = [], {c: [] for c in CATS}
        for perm in perms:
            mb = means_of(v[u, used], perm)
            for c in CATS:
                per_cat[c].append(mb[c][0])
            nulls.append(max([x for x, n in mb.values() if n >= min_regions] or [np.nan]))
        nulls = np.array(nulls)
        assert row["null_mean"] == pytest.approx(np.nanmean(nulls))
        assert row["excess"] == pytest.approx(m[best][0] - np.nanmean(nulls))
        assert row["p_value"] == pytest.approx((1 + (nulls >= m[best][0]).sum()) / (B + 1))
        j = prof.categories.index(best)
        assert prof.band_low[u, j] == pytest.approx(np.nanquantile(per_cat[best], 0.025))
        assert prof.band_high[u, j] == pytest.approx(np.nanquantile(per_cat[best], 0.975))
    assert n_checked >= 4


def test_unit_profiles_top_units_by_hand():
    # 3 units, two images with one region each per category: unit 2 is best in "person head"
    # (3.0), unit 0 in "text" (2.0); unit 1 has "text" on one region only
    images = ["a", "b", "a", "b"]
    cats = ["person head", "person head", "text", "text"]
    v = np.array([[0.0, 0.0, 2.0, 2.0],
                  [1.0, 1.0, np.nan, 5.0],
                  [3.0, 3.0, 1.0, 1.0]])
    a = xr.DataArray(v, dims=("unit", "region"),
                     coords={"unit": [10, 11, 12], "image": ("region", images),
                             "category": ("region", cats), "region_id": ("region", [1, 1, 2, 2])})
    prof = unit_profiles(a, threshold=1.5, n_null=5, seed=0, min_regions=2)
    assert prof.top_units(2) == {"person head": [12, 11], "text": [10, 12]}
    t = prof.table.set_index("unit")
    assert t.loc[11, "best_category"] == "person head"  # text (5.0) rests on one region
    assert list(t["rank"]) == [1, 2, 1] and list(t["n_above_T"]) == [1, 1, 1]
    assert unit_profiles(a, threshold=1.5, n_null=5, seed=0).top_units(1)["text"] == [11]


def test_unit_profiles_images_null_without_freedom_is_the_observed_value():
    # one region per image: relabelling within images changes nothing, so the null equals the
    # observed best and p = 1 for every unit
    images = ["a", "b", "c", "d"]
    cats = ["person head", "text", "person head", "text"]
    v = np.random.default_rng(4).normal(size=(5, 4))
    a = xr.DataArray(v, dims=("unit", "region"),
                     coords={"image": ("region", images), "category": ("region", cats)})
    t = unit_profiles(a, threshold=1.0, n_null=20, seed=1, null="images").table
    np.testing.assert_allclose(t["excess"], 0.0, atol=1e-12)
    np.testing.assert_allclose(t["p_value"], 1.0)


def test_unit_profiles_errors():
    a = _assoc(np.random.default_rng(1), 4, ["x", "y"])
    with pytest.raises(DataError, match="null must be one of"):
        unit_profiles(a, threshold=1.0, n_null=10, seed=0, null="units")
    with pytest.raises(DataError, match="n_null"):
        unit_profiles(a, threshold=1.0, n_null=0, seed=0)
    with pytest.raises(DataError, match="min_regions"):
        unit_profiles(a, threshold=1.0, n_null=5, seed=0, min_regions=0)
    with pytest.raises(DataError, match="every association is NaN"):
        unit_profiles(a * np.nan, threshold=1.0, n_null=5, seed=0)


def test_best_images_one_region_per_image_in_assoc_order():
    from dissect.site import _best_images

    a = xr.DataArray([[0.5, 2.0, np.nan, 1.0, 3.0]], dims=("unit", "region"),
                     coords={"image": ("region", ["p", "p", "q", "r", "r"]),
                             "category": ("region", ["text"] * 4 + ["food"]),
                             "region_id": ("region", [1, 2, 1, 1, 2])})
    cats = np.asarray(a["category"].values)
    assert _best_images(a, cats, 0, "text", 5) == [("p", 2, 2.0), ("r", 1, 1.0)]
    assert _best_images(a, cats, 0, "text", 1) == [("p", 2, 2.0)]
    assert _best_images(a, cats, 0, "drink", 3) == []


# --------------------------------------------------------------------------- pictures


def test_overlay_is_the_bilinear_map_on_the_row_scale():
    import torch

    rng = np.random.default_rng(2)
    thumb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    amap = rng.random((5, 6))
    got = overlay(thumb, amap, 0.2, 0.9, image_size=(60, 80), alpha=1.0)
    up = torch.nn.functional.interpolate(torch.tensor(amap)[None, None], size=(30, 40),
                                         mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_array_equal(got, colour_map(up, 0.2, 0.9))
    # values beyond the scale are clipped to its ends
    lo = colour_map(np.array([[-5.0]]), 0.2, 0.9)
    np.testing.assert_array_equal(lo, colour_map(np.array([[0.2]]), 0.2, 0.9))
    with pytest.raises(DataError, match="region mask"):
        overlay(thumb, amap, 0, 1, image_size=(60, 80), region_mask=np.ones((10, 10), bool))


def test_overlay_draws_fixations_and_region_outline():
    thumb = np.full((50, 50, 3), 100, dtype=np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[20:60, 20:60] = True
    out = overlay(thumb, None, 0, 1, image_size=(100, 100), points=np.array([[80.0, 80.0]]),
                  region_mask=mask)
    assert tuple(out[40, 40]) != (100, 100, 100)  # the fixation at (40, 40) in the thumbnail
    assert (out[10:30, 10] > 200).all()  # the outline's left edge at x = 10
    assert tuple(out[20, 20]) == (100, 100, 100)  # inside the region: untouched
    assert thumbnail(np.zeros((100, 200, 3), np.uint8), 50).shape == (25, 50, 3)


def test_category_bars_svg_is_valid_and_complete():
    svg = category_bars_svg(CATS, np.array([1.0, np.nan, -0.5]), np.array([0.1, 0.2, np.nan]),
                            np.array([0.8, 0.9, np.nan]), 1.5)
    root = ElementTree.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    rects = root.findall(f"{ns}rect") or root.findall("rect")
    assert sum(r.get("class") == "bar" for r in rects) == 2  # NaN: no bar
    assert sum(r.get("class") == "band" for r in rects) == 2
    assert "T = 1.5" in svg and "n/a" in svg


# --------------------------------------------------------------------------- the site


def test_site_pages_units_and_references(tmp_path, site_inputs):
    inp = site_inputs
    summary = _build(tmp_path, inp)
    site = tmp_path / "site"
    assert summary.index == site / "index.html"
    # unit pages: the top-2 units of every category of the layers with maps, nothing else
    expected = set()
    for ly in inp.layers[:2]:
        prof = unit_profiles(ly.assoc, threshold=1.5, n_null=50, seed=0)
        for us in prof.top_units(2).values():
            expected |= {slug(ly.model, ly.layer, u) + ".html" for u in us}
    expected.add("pt--block1--5.html")  # the model page's unit gets a page too
    got = {p.name for p in (site / "pages" / "units").glob("*.html")}
    assert got == expected and summary.n_unit_pages == len(expected)
    # every layer page lists every unit; every page's local references exist
    for ly in inp.layers:
        page = site / "pages" / "layers" / f"{slug(ly.model, ly.layer)}.html"
        assert page.read_text().count("<tr data-category=") == ly.assoc.sizes["unit"]
    pages = list(site.rglob("*.html"))
    assert len(pages) == 1 + 3 + len(expected) + 1
    for page in pages:
        for ref in _refs(page):
            assert ref.exists(), f"{page} references {ref}"
    toy = (site / "pages" / "models" / "toy.html").read_text()
    assert 'href="../units/pt--block1--5.html"' in toy and "a large readout weight" in toy
    assert 'href="../layers/pt--block1.html"' in toy
    index = (site / "index.html").read_text()
    assert 'href="../report.html"' in index and "block2" in index
    # the fine-tuned unit page shows the pretrained unit on the same images
    ft = next((site / "pages" / "units").glob("k1_s0--block1--*.html")).read_text()
    assert "Before fine-tuning" in ft
    ft_imgs = re.findall(r'src="(\.\./\.\./pages/img/units/[^"]+)"', ft)
    assert any("--for--" in s for s in ft_imgs) and any("--for--" not in s for s in ft_imgs)
    assert summary.n_files == sum(1 for p in site.rglob("*") if p.is_file())


def _scales(text):
    return [(float(lo), float(hi)) for lo, hi in re.findall(
        r'<div class="scale"><span>([-\d.]+)</span><span class="ramp"></span>'
        r'<span>([-\d.]+)</span>', text)]


def test_site_unit_images_use_one_scale_per_row(tmp_path, site_inputs):
    inp = site_inputs
    _build(tmp_path, inp)
    units = tmp_path / "site" / "pages" / "units"
    page = next(units.glob("pt--block1--*.html"))
    unit = int(page.stem.split("--")[-1])
    text = page.read_text()
    images = re.findall(r"<figcaption>(\d+) · NSS", text)
    assert 1 <= len(images) <= 3
    row = inp.maps[[inp.ids.index(i) for i in images], unit]
    (lo, hi), *_ = _scales(text)
    assert lo == pytest.approx(row.min(), abs=0.006)
    assert hi == pytest.approx(row.max(), abs=0.006)
    # a fine-tuned unit: its own maps on top, the pretrained unit's maps on the same images
    checked = 0
    for page in units.glob("k1_s0--block1--*.html"):
        unit = int(page.stem.split("--")[-1])
        text = page.read_text()
        images = re.findall(r"<figcaption>(\d+) · NSS", text)
        if not images:
            continue
        n = len(images) // 2
        assert images[:n] == images[n:]  # the same images before and after
        rows = [inp.ft_maps[[inp.ids.index(i) for i in images[:n]], unit],
                inp.maps[[inp.ids.index(i) for i in images[:n]], unit]]
        for (lo, hi), r in zip(_scales(text)[:2], rows, strict=True):
            assert (lo, hi) == (pytest.approx(r.min(), abs=0.006),
                                pytest.approx(r.max(), abs=0.006))
        checked += 1
    assert checked >= 2


def test_site_unit_popout_arrays_are_the_units_best_by_nmm(tmp_path, site_inputs):
    import torch

    inp = site_inputs
    _build(tmp_path, inp)
    units = tmp_path / "site" / "pages" / "units"
    checked = 0
    for page in units.glob("pt--block1--*.html"):
        unit = int(page.stem.split("--")[-1])
        # reference: upsample (torch, align_corners=False), standardise, mean over the target
        nmm = []
        for a, m in zip(inp.arrays, inp.pop_maps[:, unit], strict=True):
            up = torch.nn.functional.interpolate(torch.tensor(m)[None, None], size=a.mask.shape,
                                                 mode="bilinear", align_corners=False)[0, 0]
            z = ((up - up.mean()) / up.std(unbiased=False)).numpy()
            nmm.append(z[a.mask].mean())
        order = np.argsort(nmm)[::-1][:2]
        text = page.read_text().split("<h2>Pop-out arrays</h2>")[1]
        got = re.findall(r"<figcaption>(\w+) · NMM ([-\d.]+)</figcaption>", text)
        assert [d for d, _ in got] == [inp.arrays[i].dimension for i in order]
        assert [float(v) for _, v in got] == pytest.approx([nmm[i] for i in order], abs=0.006)
        feature = np.mean([x for x, a in zip(nmm, inp.arrays, strict=True)
                           if a.dimension != "conjunction"])
        assert f"feature arrays: {feature:.2f}" in text
        checked += 1
    assert checked >= 2
    # the fine-tuned layer has no maps on the arrays and no pop-out table: no section
    ft = next(units.glob("k1_s0--block1--*.html")).read_text()
    assert "Pop-out arrays" not in ft


def test_site_errors_name_the_problem(tmp_path, site_inputs):
    inp = site_inputs
    with pytest.raises(DataError, match="expected 'model/layer/unit'"):
        _build(tmp_path, inp, extra_units=["pt/block1"])
    with pytest.raises(DataError, match="no dissected layer pt/block9"):
        _build(tmp_path, inp, extra_units=["pt/block9/1"])
    with pytest.raises(DataError, match="pt/block1: unit 99 is not among the layer's 6 units"):
        _build(tmp_path, inp, extra_units=["pt/block1/99"])
    with pytest.raises(DataError, match="no stored maps"):
        _build(tmp_path, inp, extra_units=["pt/block2/1"])
    _build(tmp_path, inp, extra_units=["pt/block1/0"])  # the never-defined unit gets a page
    assert (tmp_path / "site" / "pages" / "units" / "pt--block1--0.html").is_file()
    with pytest.raises(DataError, match="must be empty"):
        _build(tmp_path, inp)


def test_report_html_renders_tables_and_escapes_html(tmp_path):
    md = tmp_path / "report.md"
    md.write_text("# The report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![fig](figures/x.png)\n\n"
                  "<script>alert(1)</script>\n")
    out = write_report_html(md, tmp_path / "report.html", back_link="site/index.html")
    html = out.read_text()
    assert "<title>The report</title>" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert '<img src="figures/x.png" alt="fig"' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="site/index.html"' in html
    assert "<h1>" in markdown_to_html("# x", title="x")
    with pytest.raises(DataError, match="run the `report` stage"):
        write_report_html(tmp_path / "none.md", tmp_path / "none.html")


# --------------------------------------------------------------------------- in a browser


def _need_browser():
    from dissect.site_check import browser_paths

    try:
        import selenium  # noqa: F401
    except ImportError:
        ok = False
    else:
        ok = browser_paths() is not None
    if not ok:
        if os.environ.get("DISSECT_REQUIRE_BROWSER") == "1":
            pytest.fail("DISSECT_REQUIRE_BROWSER=1 but chromium, chromedriver or selenium is "
                        "missing")
        pytest.skip("headless Chromium not installed (apt-get install chromium "
                    "chromium-driver); CI installs it")


@pytest.mark.browser
def test_site_in_headless_chromium(tmp_path, site_inputs):
    _need_browser()
    from selenium.webdriver.common.by import By

    from dissect.site_check import check_page, chromium

    _build(tmp_path, site_inputs)
    site = tmp_path / "site"
    unit_page = sorted((site / "pages" / "units").glob("k1_s0--*.html"))[0]
    layer_page = site / "pages" / "layers" / "pt--block1.html"
    with chromium(1100, 900) as d:
        for page in (site / "index.html", layer_page, unit_page,
                     site / "pages" / "models" / "toy.html"):
            c = check_page(d, page)
            assert c.ok, (page, c.console_errors, c.broken_images, c.missing_links)
            d.save_screenshot(str(tmp_path / f"{page.stem}.png"))
        assert (tmp_path / "index.png").stat().st_size > 1000
        c = check_page(d, unit_page)
        n = len(re.findall(r"· NSS", unit_page.read_text()))
        assert n >= 2 and n % 2 == 0 and len(c.images) == n  # after and before: same images
        # the unit table sorts: click "NSS" (descending first), then again (ascending)
        check_page(d, layer_page)
        header = d.find_element(By.XPATH, "//table[@id='units']//th[text()='NSS']")

        def column():
            cells = d.find_elements(By.XPATH, "//table[@id='units']/tbody/tr/td[3]")
            return [c.get_attribute("data-value") for c in cells]

        header.click()
        got = column()
        numbers = [float(v) for v in got if v]
        assert numbers == sorted(numbers, reverse=True) and got[len(numbers):] == [""] * (
            len(got) - len(numbers))  # undefined units last
        header.click()
        numbers = [float(v) for v in column() if v]
        assert numbers == sorted(numbers)
        # filtering by category hides the other rows
        from selenium.webdriver.support.ui import Select

        Select(d.find_element(By.ID, "category-filter")).select_by_visible_text("text")
        shown = d.find_elements(By.XPATH, "//table[@id='units']/tbody/tr[not(@hidden)]")
        assert shown and all(r.find_elements(By.XPATH, "td[2]")[0].text == "text"
                             for r in shown)
        assert d.find_element(By.ID, "units-count").text.startswith(f"{len(shown)} of ")
