"""Input placement (prompt tuning, P-tuning v1): soft slots are positions of the input
sequence whose embeddings come from the prompt table instead of the token embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from transformers import PreTrainedModel

from promptkit.backbone.attention import shares_key_value_heads, use_promptkit_attention
from promptkit.backbone.common_start import CommonStart
from promptkit.backbone.top_layer import TopLayer
from promptkit.core.config import PromptsConfig
from promptkit.text.placements.base import Contribution, Placement


class InputConfig(PromptsConfig):
    """``prompts`` of the input placement."""

    placement: Literal["input"] = "input"


class InputPlacement(Placement):
    """Splices the prompt vectors into the input embeddings at the soft-slot positions. On a
    causal decoder, the positions every row of a batch starts with run once
    (``placements.common_start``); on an encoder, the top layer runs only the positions
    read (``placements.top_layer``)."""

    name = "input"
    config = InputConfig

    @classmethod
    def slots_are_words(cls, encoded: bool) -> bool:
        return not encoded

    def __init__(self, config: InputConfig, model: PreTrainedModel) -> None:
        super().__init__(config, model)
        if shares_key_value_heads(model):
            use_promptkit_attention(model, required=False)
        self.common_start = CommonStart(model, self)
        self.top_layer = TopLayer(model, self)

    def contribution(
        self, vectors: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> Contribution:
        return Contribution(inputs=vectors)
