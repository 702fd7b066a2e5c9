"""Placements: where soft slots go. Each is a ``Placement`` subclass in its own module, with
its config section; registering it is one line here.

- ``input`` (prompt tuning, P-tuning v1): positions of the input embeddings;
- ``prefix`` (prefix tuning, P-tuning v2): keys and values of the selected layers;
- ``deep`` (deep infix prompts): input positions replaced before each selected layer.
"""

from __future__ import annotations

from promptkit.backbone.prompting import Prompting
from promptkit.core.config import tagged_union
from promptkit.core.registry import Registry
from promptkit.text.placements.base import Placement
from promptkit.text.placements.deep import DeepPlacement
from promptkit.text.placements.input import InputPlacement
from promptkit.text.placements.prefix import PrefixPlacement

PLACEMENTS: Registry[type[Placement]] = Registry(
    "placement", (InputPlacement, PrefixPlacement, DeepPlacement)
)
# The `prompts` section of a text recipe: one member per placement, told apart by `placement`.
PlacementConfigs = tagged_union([cls.config for cls in PLACEMENTS.values()], "placement", "input")

__all__ = ["PLACEMENTS", "Placement", "PlacementConfigs", "Prompting"]
