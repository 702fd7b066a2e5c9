"""Deep placement (deep infix prompts, the text twin of VPT-deep): soft slots are input
positions, and before each selected layer their hidden states are replaced by that layer's
own vectors (forward pre-hooks on the layers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from transformers import PreTrainedModel

from promptkit.backbone.layers import layer_list, n_layers, select_layers
from promptkit.core.config import LayeredPromptsConfig
from promptkit.text.placements.base import Contribution, Placement, replaced_before_layer


class DeepConfig(LayeredPromptsConfig):
    """``prompts`` of the deep placement."""

    placement: Literal["deep"] = "deep"


class DeepPlacement(Placement):
    """Replaces the hidden states of the soft slots before each selected layer.

    A prompt-table row holds one vector per prompted layer: layer 0's enters through the input
    embeddings (as in prompt tuning); each selected layer ``l >= 1`` gets its own through a
    forward pre-hook on that layer, which acts only on this placement's forwards.
    """

    name = "deep"
    config = DeepConfig

    def __init__(self, config: DeepConfig, model: PreTrainedModel) -> None:
        super().__init__(config, model)
        blocks = layer_list(model)
        selected = select_layers(config.layers, n_layers(model))
        self.layers = [0, *(i for i in selected if i > 0)]
        self._handles = [
            blocks[index].register_forward_pre_hook(
                replaced_before_layer(index, self), with_kwargs=True
            )
            for index in self.layers[1:]
        ]

    @property
    def width(self) -> int:
        """Size of one prompt-table row: a hidden-size vector per prompted layer."""
        return len(self.layers) * self.embed.embedding_dim

    def contribution(
        self, vectors: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> Contribution:
        """Layer 0's vectors go into the input, each later layer's before that layer."""
        per_layer = vectors.view(vectors.shape[0], len(self.layers), self.embed.embedding_dim)
        later = {index: per_layer[:, d] for d, index in enumerate(self.layers[1:], start=1)}
        return Contribution(inputs=per_layer[:, 0], layers=later)

    def release(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        super().release()
