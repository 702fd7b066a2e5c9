"""MkDocs hooks: the configuration reference is written from the config schemas at build."""

from __future__ import annotations

from typing import Any

from promptkit.config_reference import reference

MARKER = "<!-- the configuration reference -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Put the reference where a page has its marker."""
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
