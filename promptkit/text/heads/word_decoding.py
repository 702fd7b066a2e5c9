"""Label words of several tokens, decoded token by token (``multi_token: decode``).

Each example is scored once per label word, in rows of its own, and a word's score is the
log-probability of its whole token sequence:

- a causal LM reads the word's tokens after the prompt, each predicted from the prompt and
  the word's tokens before it (one row per word: the prompt, then the word but its last
  token);
- a masked LM has [MASK] stand for as many consecutive mask tokens as the word has pieces
  and fills them left to right (PET's decoding): row j has the word's first j pieces in place
  and reads piece j at the mask after them (one row per piece).

A word of one token scores exactly as ``multi_token: first`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from promptkit.text.encoding import EncodedPrompt


class WordDecoder(nn.Module):
    """The rows every example expands into, and how to read word scores back from them.

    Args:
        ids: ``[C, W, T]`` pieces of every label word (padded), as ``Verbalizer.token_ids``.
        mask: ``[C, W, T]`` which pieces are real.
        causal: a causal LM (else a masked LM).
        mask_token_id: the masked LM's mask token.
    """

    def __init__(
        self, ids: torch.Tensor, mask: torch.Tensor, causal: bool, mask_token_id: int | None
    ) -> None:
        super().__init__()
        self.causal, self.mask_token_id = causal, mask_token_id
        self.n_words = ids.shape[0] * ids.shape[1]
        self.rows: list[list[int]] = []  # what each row has where [MASK] is
        targets, offsets, words = [], [], []
        for word, (pieces, real) in enumerate(zip(ids.flatten(0, 1), mask.flatten(0, 1))):  # noqa: B905
            pieces = pieces[real].tolist()
            if not pieces:
                continue
            if causal:
                self.rows.append(pieces[:-1])
                targets.append(pieces)
                offsets.append(list(range(len(pieces))))
                words.append(word)
                continue
            for j, piece in enumerate(pieces):
                self.rows.append(pieces[:j] + [mask_token_id] * (len(pieces) - j))
                targets.append([piece])
                offsets.append([j])
                words.append(word)
        width = max(len(t) for t in targets)
        self.register_buffer("targets", _padded(targets, width), persistent=False)
        self.register_buffer("offsets", _padded(offsets, width), persistent=False)
        real = _padded([[1] * len(t) for t in targets], width).bool()
        self.register_buffer("real", real, persistent=False)
        self.register_buffer("word_of_row", torch.tensor(words), persistent=False)
        self.register_buffer("has_word", mask[..., 0].flatten(), persistent=False)

    def expand(self, encoded: Sequence[EncodedPrompt]) -> list[EncodedPrompt]:
        """Every example's rows, example by example."""
        return [self._row(e, tokens) for e in encoded for tokens in self.rows]

    def _row(self, e: EncodedPrompt, tokens: list[int]) -> EncodedPrompt:
        at = e.mask_position + 1 if self.causal else e.mask_position
        cut = at if self.causal else at + 1  # a masked LM's [MASK] is replaced

        def spliced(values: list[int], new: list[int]) -> list[int]:
            return values[:at] + new + values[cut:]

        blank = [-1] * len(tokens)
        return replace(
            e,
            input_ids=spliced(e.input_ids, tokens),
            slot_ids=spliced(e.slot_ids, blank),
            word_ids=spliced(e.word_ids, blank),
        )

    def positions(self, mask_positions: torch.Tensor) -> torch.Tensor:
        """Where each row's pieces are read: ``[B * R, T]``."""
        offsets = self.offsets.repeat(mask_positions.shape[0] // len(self.rows), 1)
        return mask_positions.unsqueeze(-1) + offsets

    def word_scores(self, logits: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Each word's log-probability ``[B, C, W]`` from the LM logits at ``positions``
        (``[B * R, T, V]``); ``-inf`` where a class has fewer words."""
        rows = len(self.rows)
        log_probs = logits.float().log_softmax(-1)
        targets = self.targets.repeat(logits.shape[0] // rows, 1)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        per_row = picked.masked_fill(~self.real.repeat(logits.shape[0] // rows, 1), 0).sum(-1)
        per_row = per_row.view(-1, rows)
        words = per_row.new_zeros(per_row.shape[0], self.n_words)
        words.index_add_(1, self.word_of_row, per_row)
        words = words.masked_fill(~self.has_word, -math.inf)
        return words.view(per_row.shape[0], n_classes, -1)


def _padded(rows: list[list[int]], width: int) -> torch.Tensor:
    return torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long)
