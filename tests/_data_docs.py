"""What a reader of a Data Docs site sees: the visible text of its pages, to search for data cells in it."""

from __future__ import annotations

import html
import re
from pathlib import Path


def docs_text(root: Path) -> str:
    """The visible text of every Data Docs page under ``root`` (markup, styles and the site's static assets left out).

    :param root: the Data Docs folder (holds ``index.html``).
    """
    pages = [p for p in root.rglob("*.html") if "static" not in p.relative_to(root).parts]
    text = "\n".join(p.read_text() for p in pages)
    text = re.sub(r"<(style|script|svg)\b.*?</\1>", " ", text, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def docs_tokens(root: Path) -> set[str]:
    """The words and numbers of the Data Docs pages under ``root``, to look for a whole cell value among them."""
    return set(re.split(r"[\s,;:()\[\]{}'\"]+", docs_text(root)))
