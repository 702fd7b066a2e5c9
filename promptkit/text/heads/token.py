"""Token head (sequence labelling): a tag for every input word."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, field_validator

from promptkit.core.config import HeadConfig, distinct_classes
from promptkit.tasks import TAGGING
from promptkit.text.heads.base import Outputs
from promptkit.text.heads.classifier import ClassifierHead, labels

if TYPE_CHECKING:
    from promptkit.backbone.loading import Backbone
    from promptkit.text.template import Template


class TokenConfig(HeadConfig):
    """``head`` of the token classifier."""

    type: Literal["token"] = "token"
    classes: list[str] | None = Field(None, description="the tags (default: from the data)")
    dropout: float = Field(0.1, ge=0, lt=1, description="on the word states, in training")

    _distinct = field_validator("classes")(distinct_classes)


class TokenClassifierHead(ClassifierHead):
    """Labels every input word from the hidden state of its first sub-token.

    Only word starts are read, so soft-slot positions, anchors and special tokens never reach
    the head and labels align whatever the template. A word cut off by ``max_length`` has no
    start: its logits are zero, so it is predicted as the first class (put "O" first).

    Args:
        hidden_size: the backbone's hidden size.
        classes: the tags, in order.
        dropout: dropout before the linear layer.
    """

    type = "token"
    config = TokenConfig
    task = TAGGING

    def __init__(self, hidden_size: int, classes: Sequence[str], dropout: float = 0.1) -> None:
        super().__init__(hidden_size, classes, dropout=dropout)

    @classmethod
    def check(cls, config: TokenConfig, template: Template) -> list[str] | None:
        return config.classes

    @classmethod
    def build(
        cls,
        config: TokenConfig,
        backbone: Backbone,
        template: Template,
        classes: Sequence[str],
    ) -> TokenClassifierHead:
        return cls(backbone.hidden_size, labels(config, classes), config.dropout)

    def read(self, outputs: Outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tag logits ``[B, W, C]`` for the W words of the longest example."""
        return super().read(outputs, batch) * (batch["word_starts"] >= 0).unsqueeze(-1)

    def read_positions(self, batch: dict[str, torch.Tensor]) -> None:
        """None: a tagger reads every word."""
        return None

    def _pooled(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        starts = batch["word_starts"].clamp(min=0).unsqueeze(-1)
        return hidden.gather(1, starts.expand(-1, -1, hidden.shape[-1]))
