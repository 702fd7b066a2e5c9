"""SoftPrompts: one table of trainable vectors for every soft slot, optionally reparameterised.

The table is initialised per slot (random, sampled vocabulary, or the embeddings of words)
and may be produced by a prompt encoder: an MLP, or a bidirectional LSTM followed by an MLP as
in P-tuning v1. Encoders are residual with a zero-initialised output layer, so training starts
exactly at the initialisation the template asked for. ``collapse()`` turns any of them into
the plain table that is saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from promptkit.errors import TemplateError
from promptkit.template import SoftSlot

InitKind = Literal["random", "vocab"]
EncoderKind = Literal["none", "mlp", "lstm"]


class _MLP(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.Tanh(), nn.Linear(hidden, dim_out))
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
        dim: vector size (the backbone's hidden size for input-level prompts).
        encoder: "none", "mlp" or "lstm" (P-tuning v1).
        encoder_hidden: hidden size of the encoder (default: ``dim``).
        dropout: dropout on the produced vectors while training.
    """

    def __init__(
        self,
        n_slots: int,
        dim: int,
        encoder: EncoderKind = "none",
        encoder_hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(n_slots, dim))
        hidden = encoder_hidden or dim
        if n_slots == 0:
            encoder = "none"
        self.encoder: nn.Module | None = {
            "none": lambda: None,
            "mlp": lambda: _MLP(dim, hidden, dim),
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
        default: InitKind = "vocab",
        generator: torch.Generator | None = None,
    ) -> None:
        """Set each row from its slot's initialisation.

        Args:
            slots: the template's soft slots, in row order.
            embeddings: the backbone's input embedding matrix ``[vocab, dim]``.
            tokenizer: to turn init words into token ids.
            default: for slots that name none: "random" (normal, the embeddings' std) or
                "vocab" (embeddings of tokens sampled from the vocabulary).
            generator: seeded randomness.
        """
        for row, slot in enumerate(slots):
            kind = slot.init or f"@{default}"
            if kind == "@random":
                vector = torch.randn(embeddings.shape[1], generator=generator) * embeddings.std()
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
            self.table[row] = vector.to(self.table.dtype)


def _word_ids(tokenizer: PreTrainedTokenizerBase, words: str) -> list[int]:
    ids = tokenizer(" " + words, add_special_tokens=False)["input_ids"]
    if not ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
        raise TemplateError(
            f"cannot initialise a soft slot from {words!r}: the tokenizer "
            "does not know it. Choose other words, or @random / @vocab."
        )
    return ids
