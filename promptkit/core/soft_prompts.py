"""SoftPrompts: one table of trainable vectors for every soft slot, optionally reparameterised.

The table may be produced by a prompt encoder: an MLP, or a bidirectional LSTM followed by an
MLP as in P-tuning v1. Encoders are residual with a zero-initialised output layer, so training
starts exactly at the initialisation asked for. A table narrower than the vectors is
projected by its MLP instead (prefix tuning's reparameterisation: one embedding-sized row per
prefix position, widened to every layer's keys and values). ``collapse()`` turns any of them
into the plain table that is saved. How a text template's slots start is
``promptkit.text.slot_start``; VPT starts its own.
"""

from __future__ import annotations

import torch
from torch import nn

from promptkit.errors import ConfigError


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
