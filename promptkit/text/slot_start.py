"""How a template's soft slots start: the embeddings of words the slot names, a sampled
vocabulary token (``@vocab``) or random vectors at the embeddings' scale (``@random``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from promptkit.core.soft_prompts import SoftPrompts
from promptkit.errors import TemplateError
from promptkit.text.encoding import word_tokens
from promptkit.text.template import SoftSlot


@torch.no_grad()
def start_slots(
    prompts: SoftPrompts,
    slots: Sequence[SoftSlot],
    embeddings: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    default: str = "vocab",
    generator: torch.Generator | None = None,
) -> None:
    """Set each row of ``prompts`` from its slot's initialisation (repeated across layers for
    deep rows).

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
        prompts.table[row] = vector.repeat(prompts.table.shape[1] // vector.shape[0])


def _word_ids(tokenizer: PreTrainedTokenizerBase, words: str) -> list[int]:
    ids = word_tokens(tokenizer, words, space=True)
    if ids is None:
        raise TemplateError(
            f"cannot initialise a soft slot from {words!r}: the tokenizer "
            "does not know it. Choose other words, or @random / @vocab."
        )
    return ids
