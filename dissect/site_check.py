"""Open pages of the unit browser in headless Chromium (Selenium + Debian's chromium and
chromium-driver) and report what a person would see go wrong: console errors, images that did
not load, links to local files that do not exist. Used by the browser tests and by
``docs/screenshots.py``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--allow-file-access-from-files",
)
"""The flags this workplace's machines need: no network is reachable, so Chromium's background
connections are turned off; root needs --no-sandbox."""


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[object]:
    """A Selenium Chrome driver on headless Chromium, with the browser console logged."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are not installed (Debian: apt-get "
                           "install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={width},{height}")
    profile = tempfile.mkdtemp(prefix="dissect-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class PageCheck:
    url: str
    title: str
    console_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    missing_links: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.console_errors or self.broken_images or self.missing_links)


def _local(url: str) -> Path | None:
    u = urlparse(url)
    return Path(unquote(u.path)) if u.scheme == "file" else None


def check_page(driver, page: Path) -> PageCheck:
    """Load ``page`` from a file URL and check it (see the module docstring)."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(Path(page).resolve().as_uri())  # returns after the load event: images loaded
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, "
        "i.naturalWidth]);")
    links = driver.execute_script(
        "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
    logs = driver.get_log("browser")
    check = PageCheck(url=driver.current_url, title=driver.title)
    check.console_errors = [e["message"] for e in logs if e.get("level") == "SEVERE"]
    for src, complete, natural in images:
        check.images.append(src)
        local = _local(src)
        if not complete or not natural or (local is not None and not local.is_file()):
            check.broken_images.append(src)
    for href in links:
        local = _local(href.split("#")[0])
        if local is not None and not local.exists():
            check.missing_links.append(href)
    return check
