"""Injectors put the soft prompts into a backbone. All backbone-specific code lives here.

``InputInjector`` (shallow: prompt tuning, P-tuning v1): soft slots are positions of the input
sequence whose embeddings come from the prompt table instead of the token embeddings.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel

# Models that number positions from padding_idx + 1 (RoBERTa and its descendants).
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "camembert", "xmod", "roberta-prelayernorm"}


class InputInjector:
    """Builds the keyword arguments of a backbone forward with soft slots in the input.

    Position ids are passed explicitly, counted over real tokens only, so left and right
    padding give the same result (models infer them from ``inputs_embeds`` otherwise, blind
    to padding).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.embed = model.get_input_embeddings()
        base = model.base_model
        self.takes_positions = "position_ids" in inspect.signature(base.forward).parameters
        config = model.config
        self.position_offset = (
            config.pad_token_id + 1 if config.model_type in _POSITIONS_AFTER_PADDING else 0
        )

    def __call__(
        self,
        input_ids: torch.Tensor,
        slot_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompts: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Forward kwargs with ``prompts[slot_ids]`` spliced in where ``slot_ids >= 0``."""
        embeds = self.embed(input_ids)
        if prompts.numel():
            soft = prompts.to(embeds.dtype)[slot_ids.clamp(min=0)]
            embeds = torch.where((slot_ids >= 0).unsqueeze(-1), soft, embeds)
        kwargs = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if self.takes_positions:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions + self.position_offset
        return kwargs
