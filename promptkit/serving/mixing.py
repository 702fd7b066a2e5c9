"""The placements of several prompt models on one backbone, as one: a batch whose rows belong to
different models gets each row's own prompts, in one forward, from what each model's
placement contributes (``promptkit.text.placements.base.Contribution``), whatever the placement:

- input vectors: the models' tables stacked into one, each row's slot ids moved into its
  model's block;
- vectors before a layer: before each layer that any model prompts, the rows of the models
  that prompt it get their own vectors (per-row slot ids into a stacked table for that layer);
- prefixes: at each attention module that any model prefixes, every row gets its model's keys
  and values, padded to the longest prefix, with a per-row mask of the prefix positions it
  sees (none, for rows of models that do not prefix the module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel

from promptkit.backbone.layers import layer_list
from promptkit.text.placements.base import (
    PROMPTING_KWARG,
    Contribution,
    Placement,
    Prompting,
    replaced_before_layer,
)
from promptkit.text.placements.prefix import Prefix


class MixedPlacement:
    """One placement for the rows of several models (``placements``, by model index), from what
    each one contributes to a forward.

    Args:
        placements: each model's placement, all on ``model``; each must be mixable.
        model: the shared backbone.
    """

    def __init__(self, placements: Sequence[Placement], model: PreTrainedModel) -> None:
        self.placements = list(placements)
        self.embedder = self.placements[0]
        # every layer: which ones a batch prompts is known only from its contributions
        self._handles = [
            block.register_forward_pre_hook(replaced_before_layer(index, self), with_kwargs=True)
            for index, block in enumerate(layer_list(model))
        ]

    def release(self) -> None:
        """Remove the layer hooks."""
        for handle in self._handles:
            handle.remove()

    def __call__(
        self,
        batch: Mapping[str, torch.Tensor],
        vectors: Sequence[torch.Tensor],
        owners: torch.Tensor,
    ) -> dict[str, object]:
        """Forward kwargs of a mixed batch.

        Args:
            batch: the collated rows; ``slot_ids`` index each row's own model's table.
            vectors: each model's prompt vectors (its ``prompts()``).
            owners: ``[B]`` the model index of each row.
        """
        # a mixed batch has no per-row prefix visibility of one run: each sees its whole prefix
        parts = [p.contribution(v, {}) for p, v in zip(self.placements, vectors, strict=True)]
        slot_ids = batch["slot_ids"]
        table, moved = _stacked([p.inputs for p in parts], slot_ids, owners)
        kwargs = self.embedder.embedded({**batch, "slot_ids": moved}, table)
        indices = {index for p in parts for index in p.layers}
        layers = {index: self._layer(index, parts, slot_ids, owners) for index in indices}
        modules = dict.fromkeys(m for p in parts for m in p.prefixes)
        prefixes = {m: _prefix([p.prefixes.get(m) for p in parts], owners) for m in modules}
        kwargs[PROMPTING_KWARG] = Prompting(owner=self, prefixes=prefixes, layers=layers)
        return kwargs

    def _layer(
        self,
        index: int,
        parts: Sequence[Contribution],
        slot_ids: torch.Tensor,
        owners: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors that replace the slot states before layer ``index``, per row (none for
        rows of models that do not prompt that layer)."""
        width = self.embedder.embed.embedding_dim
        per_model = [p.layers.get(index, p.inputs.new_zeros(0, width)) for p in parts]
        prompted = torch.tensor([index in p.layers for p in parts])
        rows = prompted.to(owners.device)[owners].unsqueeze(-1)
        return _stacked(per_model, slot_ids.where(rows, -1), owners)


def _prefix(own: Sequence[Prefix | None], owners: torch.Tensor) -> Prefix:
    """Each row's keys and values at one attention module (its model's, padded to the
    longest; none for models that do not prefix it), and which prefix positions it sees."""
    template = next(p for p in own if p is not None)
    heads, _, size = template.key.shape
    longest = max(p.key.shape[1] for p in own if p is not None)
    keys = template.key.new_zeros(len(own), heads, longest, size)
    values = torch.zeros_like(keys)
    seen = torch.zeros(len(own), longest, dtype=torch.bool, device=keys.device)
    for t, prefix in enumerate(own):
        if prefix is not None:
            n = prefix.key.shape[1]
            keys[t, :, :n], values[t, :, :n], seen[t, :n] = prefix.key, prefix.value, True
    return Prefix(keys[owners], values[owners], seen[owners])


def _stacked(
    tables: Sequence[torch.Tensor], slot_ids: torch.Tensor, owners: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables stacked into one, and each row's slot ids moved into its model's block."""
    offsets = torch.tensor([0, *(len(t) for t in tables)]).cumsum(0)[:-1].to(slot_ids.device)
    moved = torch.where(slot_ids >= 0, slot_ids + offsets[owners].unsqueeze(-1), -1)
    return torch.cat(list(tables)), moved
