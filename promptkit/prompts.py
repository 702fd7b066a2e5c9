"""SoftPrompts: one table of trainable vectors for every soft slot, optionally reparameterised.

The table is initialised per slot (random, sampled vocabulary, or the embeddings of words)
and may be produced by a prompt encoder: an MLP, or a bidirectional LSTM followed by an MLP as
in P-tuning v1. Encoders are residual with a zero-initialised output layer, so training starts
exactly at the initialisation the template asked for. A table narrower than the vectors is
projected by its MLP instead (prefix tuning's reparameterisation: one embedding-sized row per
prefix position, widened to every layer's keys and values). ``collapse()`` turns any of them
into the plain table that is saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from promptkit.encoding import word_tokens
from promptkit.errors import ConfigError, TemplateError
from promptkit.template import SoftSlot


class _MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int, zero_output: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.Tanh(), nn.Linear(hidden, dim_out))
        if zero_output:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _LSTMEncoder(nn.Module):
    """P-tuning v1's encoder: the slots, in order, through a 2-layer BiLSTM and an MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden // 2, num_layers=2, bidirectional=True, batch_first=True)
        self.mlp = _MLP(2 * (hidden // 2), hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.lstm(x.unsqueeze(0))[0].squeeze(0))


class SoftPrompts(nn.Module):
    """The trainable vectors of a run, one row per soft slot.

    Args:
        n_slots: number of rows.
        dim: vector size (the hidden size for input-level prompts; every selected layer's
            keys and values for prefixes).
        encoder: "none", "mlp" or "lstm" (P-tuning v1).
        encoder_hidden: hidden size of the encoder (default: the table's width).
        dropout: dropout on the produced vectors while training (prefix dropout).
        table_dim: width of the table (default ``dim``); narrower takes an "mlp" encoder that
            projects each row to ``dim``.
    """

    def __init__(
        self,
        n_slots: int,
        dim: int,
        encoder: str = "none",
        encoder_hidden: int | None = None,
        dropout: float = 0.0,
        table_dim: int | None = None,
    ) -> None:
        super().__init__()
        table_dim = table_dim or dim
        self.projected = table_dim != dim
        if self.projected and encoder != "mlp":
            raise ConfigError(f"a {table_dim}-wide table needs an mlp encoder to reach {dim}")
        self.table = nn.Parameter(torch.zeros(n_slots, table_dim))
        hidden = encoder_hidden or table_dim
        if n_slots == 0:
            encoder = "none"
        self.encoder: nn.Module | None = {
            "none": lambda: None,
            "mlp": lambda: _MLP(table_dim, hidden, dim, zero_output=not self.projected),
            "lstm": lambda: _LSTMEncoder(dim, hidden),
        }[encoder]()
        self.dropout = nn.Dropout(dropout)

    @property
    def n_slots(self) -> int:
        """How many rows the table has."""
        return self.table.shape[0]

    def _vectors(self) -> torch.Tensor:
        if self.encoder is None:
            return self.table
        if self.projected:
            return self.encoder(self.table)
        return self.table + self.encoder(self.table)

    def forward(self) -> torch.Tensor:
        """The vectors of all slots, ``[n_slots, dim]``."""
        return self.dropout(self._vectors())

    @torch.no_grad()
    def collapse(self) -> torch.Tensor:
        """The vectors as a plain table (encoder applied, no dropout), for saving."""
        return self._vectors().detach().clone()

    @torch.no_grad()
    def initialise(
        self,
        slots: Sequence[SoftSlot],
        embeddings: torch.Tensor,
        tokenizer: PreTrainedTokenizerBase,
        default: str = "vocab",
        generator: torch.Generator | None = None,
    ) -> None:
        """Set each row from its slot's initialisation (repeated across layers for deep rows).

        Args:
            slots: the template's soft slots, in row order.
            embeddings: the backbone's input embedding matrix ``[vocab, dim]``.
            tokenizer: to turn init words into token ids.
            default: for slots that name none: "random" (normal, the embeddings' std) or
                "vocab" (embeddings of tokens sampled from the vocabulary).
            generator: seeded randomness.
        """
        kinds = [slot.init or f"@{default}" for slot in slots]
        scale = embeddings.std() if "@random" in kinds else None  # one pass over the matrix
        for row, (slot, kind) in enumerate(zip(slots, kinds, strict=True)):
            if kind == "@random":
                vector = torch.randn(embeddings.shape[1], generator=generator) * scale
            elif kind == "@vocab":
                token = torch.randint(embeddings.shape[0], (1,), generator=generator)
                vector = embeddings[token[0]]
            else:
                ids = _word_ids(tokenizer, kind)
                vector = (
                    embeddings[ids].mean(0)
                    if slot.piece is None
                    else embeddings[ids[slot.piece % len(ids)]]
                )
            # Deep prompts start every layer at the same vector.
            self.table[row] = vector.repeat(self.table.shape[1] // vector.shape[0])


def _word_ids(tokenizer: PreTrainedTokenizerBase, words: str) -> list[int]:
    ids = word_tokens(tokenizer, words, space=True)
    if ids is None:
        raise TemplateError(
            f"cannot initialise a soft slot from {words!r}: the tokenizer "
            "does not know it. Choose other words, or @random / @vocab."
        )
    return ids
