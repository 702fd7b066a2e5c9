"""Heads turn a backbone forward into logits over the labels.

- ``VerbalizerHead``: label words scored from the LM's prediction at [MASK] (cloze).
- ``ClassifierHead``: a linear layer on a pooled hidden state ([CLS], mean, [MASK], last).
- ``TokenClassifierHead``: a linear layer on the first sub-token of every input word
  (sequence labelling, e.g. BIO tags).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from promptkit.backbone import reading_at
from promptkit.verbalizer import Aggregate, MultiToken, Verbalizer, score_classes

Pool = Literal["cls", "mean", "mask", "last"]


class VerbalizerHead(nn.Module):
    """Scores the verbalizer's classes from the LM logits at the mask position (no parameters).

    Args:
        verbalizer: the label words.
        tokenizer: the backbone's tokenizer.
        space_before: whether the template has a space before [MASK].
        multi_token, aggregate: see ``promptkit.verbalizer``.
    """

    def __init__(
        self,
        verbalizer: Verbalizer,
        tokenizer: PreTrainedTokenizerBase,
        space_before: bool,
        multi_token: MultiToken = "mean",
        aggregate: Aggregate = "mean",
    ) -> None:
        super().__init__()
        self.classes = verbalizer.classes
        self.multi_token, self.aggregate = multi_token, aggregate
        ids, mask = verbalizer.token_ids(tokenizer, space_before)
        self.register_buffer("word_ids", ids, persistent=False)
        self.register_buffer("word_mask", mask, persistent=False)

    def forward(
        self,
        model: PreTrainedModel,
        inputs: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        with reading_at(model, batch["mask_positions"]):
            logits = model(**inputs).logits[:, 0]
        return score_classes(
            logits.float().log_softmax(-1),
            self.word_ids,
            self.word_mask,
            self.multi_token,
            self.aggregate,
        )


class ClassifierHead(nn.Module):
    """A linear classifier on one pooled hidden state of the base model.

    Args:
        hidden_size: the backbone's hidden size.
        classes: the label names, in order.
        pool: "cls" (first token), "mean" (real tokens), "mask" ([MASK] position) or "last"
            (last real token, for causal LMs).
        dropout: dropout before the linear layer.
    """

    def __init__(
        self, hidden_size: int, classes: list[str], pool: Pool = "cls", dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.classes, self.pool = list(classes), pool
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, len(classes))

    def forward(
        self,
        model: PreTrainedModel,
        inputs: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        hidden = model.base_model(**inputs).last_hidden_state
        return self.linear(self.dropout(self._pooled(hidden, batch)).to(self.linear.weight.dtype))

    def _pooled(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        attention = batch["attention_mask"]
        if self.pool == "cls":
            first_real = attention.long().argmax(-1)
            return hidden[rows, first_real]
        if self.pool == "mask":
            return hidden[rows, batch["mask_positions"]]
        if self.pool == "last":
            last_real = attention.shape[1] - 1 - attention.long().flip(-1).argmax(-1)
            return hidden[rows, last_real]
        weights = attention.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


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

    def __init__(self, hidden_size: int, classes: list[str], dropout: float = 0.1) -> None:
        super().__init__(hidden_size, classes, dropout=dropout)

    def forward(
        self,
        model: PreTrainedModel,
        inputs: dict[str, torch.Tensor],
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Tag logits ``[B, W, C]`` for the W words of the longest example."""
        return super().forward(model, inputs, batch) * (batch["word_starts"] >= 0).unsqueeze(-1)

    def _pooled(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        starts = batch["word_starts"].clamp(min=0).unsqueeze(-1)
        return hidden.gather(1, starts.expand(-1, -1, hidden.shape[-1]))
