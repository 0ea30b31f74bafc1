"""The README's two screenshots of the unit browser, taken in headless Chromium.

    .venv/bin/python docs/screenshots.py            # after `make repro` built results/site

writes ``docs/img/site_index.png`` (the index) and ``docs/img/site_unit.png`` (a unit page:
by default the pretrained trunk's "person head" unit with the smallest per-unit p-value among
the units with a page and five images; ``--unit pt--block14--123`` picks another). Each page
is checked as the browser test checks it (no console errors, every image loaded) before the
picture is taken.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from PIL import Image

from dissect.site_check import check_page, chromium

ROOT = Path(__file__).resolve().parents[1]


def default_unit(site: Path, category: str = "person head", min_images: int = 5) -> Path:
    """The pretrained unit page for ``category`` with the smallest per-unit p-value (then the
    highest mean region NSS) among those showing at least ``min_images`` images: a unit defined
    on one or two regions can top a category by chance, and makes a poor example."""
    best, best_key = None, None
    for page in (site / "pages" / "units").glob("pt--*.html"):
        text = page.read_text(encoding="utf-8")
        if f'<dd id="best-category">{category}</dd>' not in text:
            continue
        nss = re.search(r"<dt>mean region NSS</dt><dd>([-\d.]+)</dd>", text)
        p = re.search(r"\(p = ([-\d.e]+),", text)
        n = text.split("<h2>Top held-out images</h2>")[1].split("<h2>")[0].count("<figure>")
        if not (nss and p) or n < min_images:
            continue
        key = (float(p.group(1)), -float(nss.group(1)))
        if best_key is None or key < best_key:
            best, best_key = page, key
    if best is None:
        raise SystemExit(f"no pretrained unit page with best category {category!r} and "
                         f"{min_images} images in {site}")
    return best


def shoot(driver, page: Path, out: Path, height: int) -> None:
    check = check_page(driver, page)
    if not check.ok:
        raise SystemExit(f"{page}: {check.console_errors} {check.broken_images} "
                         f"{check.missing_links}")
    driver.set_window_size(1200, height)
    driver.save_screenshot(str(out))
    # 256 colours keep the committed PNGs small (tables and thumbnails survive it)
    Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)
    print(f"{out.relative_to(ROOT)}: {out.stat().st_size / 1e3:.0f} kB from {page}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, default=ROOT / "results" / "site")
    ap.add_argument("--unit", default=None, help="unit page stem, e.g. pt--block14--123")
    args = ap.parse_args(argv)
    unit = (args.site / "pages" / "units" / f"{args.unit}.html" if args.unit
            else default_unit(args.site))
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with chromium(1200, 900) as d:
        shoot(d, args.site / "index.html", out / "site_index.png", 900)
        shoot(d, unit, out / "site_unit.png", 1100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
