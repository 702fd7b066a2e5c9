"""Classifier head: a linear layer on one pooled hidden state of the base model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from promptkit.core.config import ClassesConfig, distinct_classes
from promptkit.errors import ConfigError, TemplateError
from promptkit.tasks import CLASSIFICATION
from promptkit.text.heads.base import Head, Outputs
from promptkit.text.template import Template

if TYPE_CHECKING:
    from promptkit.backbone.loading import Backbone

Pool = Literal["cls", "mean", "mask", "last"]


class ClassifierConfig(ClassesConfig):
    """``head`` of the classifier."""

    type: Literal["classifier"] = "classifier"
    pool: Pool = Field("cls", description="cls | mean | mask ([MASK]) | last (causal LMs)")
    classes: list[str] | None = Field(None, description="the labels (default: from the data)")
    dropout: float = Field(0.1, ge=0, lt=1, description="on the pooled state, in training")

    _distinct = field_validator("classes")(distinct_classes)


class ClassifierHead(Head):
    """A linear classifier on one pooled hidden state of the base model.

    Args:
        hidden_size: the backbone's hidden size.
        classes: the label names, in order.
        pool: "cls" (first token), "mean" (real tokens), "mask" ([MASK] position) or "last"
            (last real token, for causal LMs).
        dropout: dropout before the linear layer.
    """

    type = "classifier"
    config = ClassifierConfig
    task = CLASSIFICATION

    def __init__(
        self, hidden_size: int, classes: Sequence[str], pool: Pool = "cls", dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.classes, self.pool = list(classes), pool
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, len(classes))

    @classmethod
    def check(cls, config: ClassifierConfig, template: Template) -> list[str] | None:
        if config.pool == "mask" and not template.has_mask:
            raise TemplateError(
                f"{template.name} has no [MASK], but `head.pool: mask` reads it: add [MASK] "
                "or pool another way (cls, mean, last)."
            )
        return config.classes

    @classmethod
    def build(
        cls,
        config: ClassifierConfig,
        backbone: Backbone,
        template: Template,
        classes: Sequence[str],
    ) -> ClassifierHead:
        if backbone.is_causal and config.pool == "cls":
            raise ConfigError(
                "head.pool: cls reads the first token, which sees nothing of the input in a "
                "causal LM: use last (or mean)."
            )
        return cls(backbone.hidden_size, labels(config, classes), config.pool, config.dropout)

    def read(self, outputs: Outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``[B, C]`` from the pooled hidden states."""
        pooled = self._pooled(outputs.hidden, batch)
        return self.linear(self.dropout(pooled).to(self.linear.weight.dtype))

    def read_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The pooled position of each row (None for the mean)."""
        position = self._pool_position(batch)
        return None if position is None else position.unsqueeze(-1)

    def _pool_position(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        attention = batch["attention_mask"]
        if self.pool == "cls":
            return attention.long().argmax(-1)  # the first real token
        if self.pool == "mask":
            return batch["mask_positions"]
        if self.pool == "last":
            return attention.shape[1] - 1 - attention.long().flip(-1).argmax(-1)
        return None

    def _pooled(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        position = self._pool_position(batch)
        if position is not None:
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), position]
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def labels(config: ClassifierConfig, classes: Sequence[str] | None) -> list[str]:
    """The head's labels: the config's, else the data's."""
    chosen = list(config.classes or classes or [])
    if not chosen:
        raise ConfigError(f"a {config.type} head needs its labels: set head.classes or give data.")
    return chosen
