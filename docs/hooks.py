"""MkDocs hooks: the configuration reference is written from the config schemas at build, and
figures the examples write are taken from where they write them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

from promptkit.runs.reference import reference

MARKER = "<!-- the configuration reference -->"
REPOSITORY = Path(__file__).resolve().parent.parent
FIGURES = {"images/vpt-fewshot.png": "examples/vpt/fewshot.png"}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Put the reference where a page has its marker."""
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown


def on_files(files: Files, config: Any) -> Files:
    """Add the examples' figures to the site."""
    for uri, source in FIGURES.items():
        files.append(File.generated(config, uri, abs_src_path=str(REPOSITORY / source)))
    return files
