"""Soft verbalizer (WARP, Hambardzumyan et al. 2021): a trainable vector per class, scored
against the hidden state that predicts [MASK], and started from the class's label words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from promptkit.tasks import CLASSIFICATION
from promptkit.text.heads.base import Head, Outputs
from promptkit.text.heads.verbalizer import LabelWordsConfig, check_mask
from promptkit.text.template import Template

if TYPE_CHECKING:
    from promptkit.backbone.loading import Backbone


class SoftVerbalizerConfig(LabelWordsConfig):
    """``head`` of the soft verbalizer: its label words start the class vectors."""

    type: Literal["soft_verbalizer"] = "soft_verbalizer"


class SoftVerbalizerHead(Head):
    """Class logits ``h · w_c + b_c`` from the hidden state ``h`` that predicts [MASK].

    Each ``w_c`` starts as the mean output embedding of class c's label words (their pieces
    averaged), so a causal LM with tied embeddings starts close to its hard verbalizer; the
    vectors and biases train with the ``head`` group.

    Args:
        vectors: ``[C, D]`` starting class vectors.
        classes: the class names, in order.
    """

    type = "soft_verbalizer"
    config = SoftVerbalizerConfig
    task = CLASSIFICATION

    def __init__(self, vectors: torch.Tensor, classes: Sequence[str]) -> None:
        super().__init__()
        self.classes = list(classes)
        self.vectors = nn.Parameter(vectors.detach().float().clone())
        self.bias = nn.Parameter(torch.zeros(len(classes)))

    @classmethod
    def check(cls, config: SoftVerbalizerConfig, template: Template) -> list[str]:
        """The template must have [MASK]; the label words bring the classes."""
        check_mask(template, "soft verbalizer")
        return config.words().classes

    @classmethod
    def build(
        cls,
        config: SoftVerbalizerConfig,
        backbone: Backbone,
        template: Template,
        classes: Sequence[str],
    ) -> SoftVerbalizerHead:
        words = config.words()
        ids, mask = words.token_ids(backbone.tokenizer, template.space_before_mask)
        table = backbone.output_embeddings
        pieces = table.detach().float()[ids] * mask.unsqueeze(-1)  # [C, W, T, D]
        per_word = pieces.sum(2) / mask.sum(-1, keepdim=True).clamp(min=1)
        has_word = mask[..., 0].unsqueeze(-1)
        vectors = (per_word * has_word).sum(1) / has_word.sum(1)
        return cls(vectors, words.classes)

    def read_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each example's [MASK] reading position."""
        return batch["mask_positions"].unsqueeze(-1)

    def read(self, outputs: Outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits from the hidden state at each example's [MASK] reading position."""
        hidden = outputs.hidden
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        state = hidden[rows, batch["mask_positions"]].float()
        return state @ self.vectors.T + self.bias
