"""``results/report.md`` rendered to HTML beside it (``results/report.html``), with its figures.

Markdown is parsed by markdown-it-py (CommonMark plus GitHub's pipe tables); raw HTML in the
Markdown is escaped, not passed through. The page uses the unit browser's stylesheet, inlined,
so the file is self-contained apart from the figures it links (relative paths, unchanged: the
HTML sits in the same folder as the Markdown).
"""

from __future__ import annotations

from html import escape
from importlib import resources
from pathlib import Path

from markdown_it import MarkdownIt

from dissect.errors import DataError

#: the templates, stylesheet and script the pages are made of (a stage dependency:
#: tests/stage_deps.py reads this)
PACKAGE_DATA = ("site_templates",)


def markdown_to_html(text: str, *, title: str, back_link: str | None = None) -> str:
    """A whole HTML page of the Markdown ``text``."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    css = resources.files("dissect").joinpath(PACKAGE_DATA[0], "site.css").read_text(
        encoding="utf-8")
    nav = (f'<nav><a href="{escape(back_link)}">dissect — unit browser</a></nav>'
           if back_link else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>\n{css}\nmain img {{ max-width: 100%; }}\n"
            f"</style>\n</head>\n<body>\n{nav}\n<main>\n{body}</main>\n</body>\n</html>\n")


def write_report_html(md_path: Path, html_path: Path, *, back_link: str | None = None) -> Path:
    """Render ``md_path`` to ``html_path`` (its first ``# `` heading is the title)."""
    md_path = Path(md_path)
    if not md_path.is_file():
        raise DataError(md_path, "the report is missing: run the `report` stage first")
    text = md_path.read_text(encoding="utf-8")
    title = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")),
                 md_path.stem)
    Path(html_path).write_text(markdown_to_html(text, title=title, back_link=back_link),
                               encoding="utf-8")
    return Path(html_path)
