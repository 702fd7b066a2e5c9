"""What one forward carries into the backbone for promptkit's hooks and attention.

Whatever reaches inside the backbone (prefixes, per-layer vectors, the positions the top layer
computes) travels in the forward's keyword arguments (``promptkit=Prompting(...)``), which
transformers hands down to every layer and attention call, activation checkpointing included.
Nothing is kept on the backbone between forwards, so several prompted models can share one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from promptkit.text.placements.prefix import Prefix

PROMPTING_KWARG = "promptkit"


@dataclass
class Prompting:
    """What one forward carries into the backbone for promptkit's hooks and attention.

    ``owner`` is the placement that made it (hooks of other placements leave it alone);
    ``prefixes`` maps attention modules to their prefix; ``layers`` maps the key of a layer
    hook to the vectors that replace the hidden states before that layer, and the positions
    that take them (``slot_ids`` ``[B, L]``: a row of ``vectors``, or -1); ``captured``, when
    given, receives each prefixable attention's own keys and values; ``frozen_below`` is how
    many leading layers (``layers_in_order``) run without autograd; ``common_start`` is how
    many leading positions, alike in every row, run once (``start`` holds their outputs
    while the rest of the batch runs); ``read_at`` (``[B, K]``) are the only positions the
    top layer computes, and ``full_inputs`` gives its attention the input of every position
    for its keys and values."""

    owner: object
    prefixes: dict[nn.Module, Prefix] = field(default_factory=dict)
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] | None = None
    frozen_below: int = 0
    common_start: int = 0
    start: object | None = None
    read_at: torch.Tensor | None = None
    full_inputs: dict[nn.Module, torch.Tensor] = field(default_factory=dict)


def carried(kwargs: Mapping[str, object], owner: object) -> Prompting | None:
    """The ``Prompting`` a call's keyword arguments carry, when ``owner`` made it (hooks of
    other placements on a shared backbone leave a forward alone)."""
    prompting = kwargs.get(PROMPTING_KWARG)
    if isinstance(prompting, Prompting) and prompting.owner is owner:
        return prompting
    return None
