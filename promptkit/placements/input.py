"""Input placement (prompt tuning, P-tuning v1): soft slots are positions of the input
sequence whose embeddings come from the prompt table instead of the token embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from promptkit.config import PromptsConfig
from promptkit.placements.base import Injector


class InputConfig(PromptsConfig):
    """``prompts`` of the input placement."""

    placement: Literal["input"] = "input"


class InputInjector(Injector):
    """Splices the prompt vectors into the input embeddings at the soft-slot positions."""

    name = "input"
    config = InputConfig

    def forward_kwargs(
        self, batch: Mapping[str, torch.Tensor], vectors: torch.Tensor
    ) -> dict[str, object]:
        return self.embedded(batch, vectors)
