"""The injectors of several prompt models on one backbone, as one: a batch whose rows belong to
different models gets each row's own prompts, in one forward.

- input vectors (input placement, and deep placement's layer 0): the models' tables stacked
  into one, each row's slot ids moved into its model's block;
- deep placement: before each layer that any model prompts, the rows of the models that
  prompt it get their own vectors (per-row slot ids into a stacked table for that layer);
- prefix placement: at each attention module that any model prefixes, every row gets its
  model's keys and values, padded to the longest prefix, with a per-row mask of the prefix
  positions it sees (none, for rows of models that do not prefix the module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from promptkit.layers import layer_list
from promptkit.placements.base import (
    PROMPTING_KWARG,
    Injector,
    Prompting,
    replaced_before_layer,
)
from promptkit.placements.deep import DeepInjector
from promptkit.placements.prefix import Prefix, PrefixInjector


class MixedInjector:
    """One injector for the rows of several models (``injectors``, by model index).

    Args:
        injectors: each model's injector, all on ``model``.
        model: the shared backbone.
    """

    def __init__(self, injectors: Sequence[Injector], model: PreTrainedModel) -> None:
        self.injectors = list(injectors)
        self.embedder = self.injectors[0]
        deep = {t: inj for t, inj in enumerate(self.injectors) if isinstance(inj, DeepInjector)}
        # layer index -> {model index: depth of that layer among the model's prompted ones}
        self.deep_layers: dict[int, dict[int, int]] = {}
        for t, injector in deep.items():
            for depth, index in enumerate(injector.layers[1:], start=1):
                self.deep_layers.setdefault(index, {})[t] = depth
        blocks = layer_list(model) if self.deep_layers else []
        self._handles = [
            blocks[index].register_forward_pre_hook(
                replaced_before_layer(index, self), with_kwargs=True
            )
            for index in self.deep_layers
        ]
        self.prefixed = sorted(
            {m for inj in self.injectors if isinstance(inj, PrefixInjector) for m in inj.targets},
            key=id,
        )

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
        slot_ids = batch["slot_ids"]
        first = [
            self._input_vectors(inj, v) for inj, v in zip(self.injectors, vectors, strict=True)
        ]
        table, moved = _stacked(first, slot_ids, owners)
        kwargs = self.embedder.embedded({**batch, "slot_ids": moved}, table)
        layers = {
            index: self._layer(index, depths, vectors, slot_ids, owners)
            for index, depths in self.deep_layers.items()
        }
        prefixes = {m: self._prefix(m, vectors, batch, owners) for m in self.prefixed}
        kwargs[PROMPTING_KWARG] = Prompting(owner=self, prefixes=prefixes, layers=layers)
        return kwargs

    def _input_vectors(self, injector: Injector, vectors: torch.Tensor) -> torch.Tensor:
        """What a model puts into the input embeddings: a row per soft slot (none for a
        prefix, whose slots take no positions)."""
        if isinstance(injector, PrefixInjector):
            return vectors.new_zeros(0, self.embedder.width)
        if isinstance(injector, DeepInjector):
            return vectors.view(vectors.shape[0], len(injector.layers), -1)[:, 0]
        return vectors

    def _layer(
        self,
        index: int,
        depths: dict[int, int],
        vectors: Sequence[torch.Tensor],
        slot_ids: torch.Tensor,
        owners: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors that replace the slot states before layer ``index``, per row."""
        width = self.embedder.width
        per_model = []
        for t, injector in enumerate(self.injectors):
            if t in depths:
                table = vectors[t].view(vectors[t].shape[0], len(injector.layers), width)
                per_model.append(table[:, depths[t]])
            else:
                per_model.append(vectors[t].new_zeros(0, width))
        prompted = torch.tensor([t in depths for t in range(len(self.injectors))])
        rows = prompted.to(owners.device)[owners].unsqueeze(-1)
        table, moved = _stacked(per_model, slot_ids.where(rows, -1), owners)
        return table, moved

    def _prefix(
        self,
        module: nn.Module,
        vectors: Sequence[torch.Tensor],
        batch: Mapping[str, torch.Tensor],
        owners: torch.Tensor,
    ) -> Prefix:
        """Each row's keys and values at ``module`` (padded to the longest), and which prefix
        positions it sees."""
        own = [
            inj.prefixes(v, {})[module]
            if isinstance(inj, PrefixInjector) and module in inj.targets
            else None
            for inj, v in zip(self.injectors, vectors, strict=True)
        ]
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
