"""Catalogs of ready, named specs shipped with promptkit (YAML): templates, verbalizers, and
method presets for text ("methods") and images ("vision"). They live in the repository's
top-level folders of those names and install as ``promptkit.catalog.<kind>``."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from promptkit.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9_\-]{1,100}")


def _folder(kind: str) -> Path:
    return Path(str(resources.files(f"{__package__}.{kind}")))


def entries(kind: str) -> dict[str, dict[str, Any]]:
    """All entries of one catalog ("templates", "verbalizers", "methods", "vision"), by name."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(_folder(kind).glob("*.yaml"))}


def entry(kind: str, name: str) -> dict[str, Any]:
    """One catalog entry; an unknown name is an error listing the known ones."""
    path = _folder(kind) / f"{name}.yaml"
    if not has(kind, name):
        known = ", ".join(entries(kind))
        raise ConfigError(f"the {kind} catalog has no entry {name!r}; known: {known}")
    return yaml.safe_load(path.read_text())


def has(kind: str, name: str) -> bool:
    """Whether the catalog has an entry of that name (a template's text is never one)."""
    return bool(_NAME.fullmatch(name)) and (_folder(kind) / f"{name}.yaml").is_file()
