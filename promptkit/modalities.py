"""Modalities: what kind of input a run takes. Each registers its config schema, its method
presets, its data preparation, its model builder and how it reads inputs; the rest of
promptkit asks the modality and never tests its name. A new one is a module plus a line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from promptkit.core.modality import Modality, Prepared
from promptkit.core.registry import Registry
from promptkit.errors import ConfigError
from promptkit.text.modality import TextModality
from promptkit.vision.modality import VisionModality

MODALITIES: Registry[Modality] = Registry("modality", (TextModality(), VisionModality()))


def modality_of(config: Mapping[str, Any]) -> Modality:
    """The modality a config or recipe mapping declares (``modality:``, text by default)."""
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"a config is a mapping of keys to values, not a {type(config).__name__}."
        )
    name = config.get("modality", "text")
    if not isinstance(name, str) or name not in MODALITIES:
        raise ConfigError(f"modality {name!r} is unknown; choose one of {', '.join(MODALITIES)}.")
    return MODALITIES[name]


__all__ = ["MODALITIES", "Modality", "Prepared", "modality_of"]
