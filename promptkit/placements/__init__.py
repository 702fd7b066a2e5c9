"""Placements: where soft slots go. Each is an ``Injector`` subclass in its own module, with
its config section; registering it is one line here.

- ``input`` (prompt tuning, P-tuning v1): positions of the input embeddings;
- ``prefix`` (prefix tuning, P-tuning v2): keys and values of the selected layers;
- ``deep`` (deep infix prompts): input positions replaced before each selected layer.
"""

from __future__ import annotations

from promptkit.placements.base import Injector, Prompting
from promptkit.placements.deep import DeepInjector
from promptkit.placements.input import InputInjector
from promptkit.placements.prefix import PrefixInjector
from promptkit.registry import Registry
from promptkit.schema import tagged_union

PLACEMENTS: Registry[type[Injector]] = Registry(
    "placement", (InputInjector, PrefixInjector, DeepInjector)
)
# The `prompts` section of a text recipe: one member per placement, told apart by `placement`.
PlacementConfigs = tagged_union([cls.config for cls in PLACEMENTS.values()], "placement", "input")

__all__ = ["PLACEMENTS", "Injector", "PlacementConfigs", "Prompting"]
