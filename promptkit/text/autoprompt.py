"""AutoPrompt (Shin et al. 2020): trigger words found by gradient-guided search.

A template's soft slots are the triggers. Each iteration takes a seeded batch of training
examples, puts the current words' embeddings in the slots, and for one slot (in turn) ranks
the vocabulary's whole words by the first-order estimate of how much each would lower the
loss (``-e_w · ∂loss/∂slot``); the best ``candidates`` are tried on the batch and the one with
the lowest loss is kept if it beats the current word. The result is a plain hard template,
and the same template with its soft slots started from the found words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from promptkit.core.progress import Report, track
from promptkit.errors import ConfigError, DataError
from promptkit.text.label_search import whole_words
from promptkit.text.template import SegmentKind, Template

if TYPE_CHECKING:
    from promptkit.tasks import Task
    from promptkit.text.model import PromptModel

_ESCAPED = str.maketrans({c: "\\" + c for c in "[]<>\\"})


@dataclass(frozen=True)
class FoundTemplate:
    """What the search found: the hard template, the template with its soft slots started
    from the found words, the words, and the batch loss after each iteration."""

    template: str
    seeded: str
    words: list[str]
    losses: list[float]


def autoprompt(
    model: PromptModel,
    examples: Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    iterations: int = 20,
    candidates: int = 10,
    batch_size: int = 16,
    seed: int = 13,
    progress: bool | Report = False,
) -> FoundTemplate:
    """Search a word for each soft slot of ``model``'s template (input placement, no prompt
    encoder, a classification head) on labelled ``examples`` (bound, with class indices);
    ``progress``: where the iterations done are reported (``promptkit.core.progress``)."""
    _check(model, examples, labels, iterations, candidates)
    vocabulary = whole_words(model.backbone.tokenizer, space=True)
    allowed = torch.tensor(sorted(vocabulary))
    embeddings = model.backbone.input_embeddings.detach()
    table = model.prompts.table
    tokens = _nearest(table.detach(), embeddings, allowed)
    encoded = model.encode(examples)
    generator = torch.Generator().manual_seed(seed)
    was_training, needed_grad = model.training, table.requires_grad
    model.eval()
    table.requires_grad_(True)
    losses = []
    try:
        for step in track(range(iterations), "AutoPrompt", progress):
            chosen = torch.randperm(len(encoded), generator=generator)[:batch_size].tolist()
            batch = model.collate([encoded[i] for i in chosen], [labels[i] for i in chosen])
            slot = step % len(tokens)
            loss, gradient = _loss(model, batch, embeddings[tokens], slot)
            scores = embeddings[allowed] @ -gradient
            best = (loss, tokens[slot])
            for token in allowed[scores.topk(min(candidates, len(allowed))).indices].tolist():
                trial = [*tokens[:slot], token, *tokens[slot + 1 :]]
                with torch.no_grad():
                    tried = _loss(model, batch, embeddings[trial], None)[0]
                best = min(best, (tried, token))
            tokens[slot] = best[1]
            losses.append(best[0])
    finally:
        table.requires_grad_(needed_grad)
        model.train(was_training)
    words = [vocabulary[t] for t in tokens]
    return FoundTemplate(
        _written(model.template, words, seeded=False),
        _written(model.template, words, seeded=True),
        words,
        losses,
    )


def check_config(config: Any) -> None:
    """What AutoPrompt needs of a run config, checked before any model loads."""
    from promptkit.text.model import check_recipe

    if getattr(config, "modality", "text") != "text":
        raise ConfigError(
            "AutoPrompt searches trigger words for text runs: this config is not one."
        )
    checked = check_recipe(config.recipe())
    words = checked.placement.slots_are_words(config.prompts.encoder != "none")
    _check_setup(checked.template, words, checked.task)


def _check_setup(template: Template, slots_are_words: bool, task: Task) -> None:
    """Trigger slots in a template without Jinja, on the input without a prompt encoder, for
    a classification head."""
    if not template.n_slots or template.uses_jinja:
        raise ConfigError(
            f"{template.name}: AutoPrompt searches a word for each soft slot of a template "
            "without Jinja: put trigger slots in it, e.g. '<x> [P*3] [MASK].'."
        )
    if not slots_are_words:
        raise ConfigError(
            "AutoPrompt's triggers are input words: use `prompts: {placement: input, "
            "encoder: none}`."
        )
    if not task.one_class:
        raise ConfigError("AutoPrompt searches triggers for a classifier's labels.")


def _check(
    model: PromptModel,
    examples: Sequence[Any],
    labels: Sequence[int],
    iterations: int,
    candidates: int,
) -> None:
    words = model.placement.slots_are_words(model.prompts.encoder is not None)
    _check_setup(model.template, words, model.task)
    if len(examples) != len(labels) or len(set(labels)) < 2:
        raise DataError(
            f"AutoPrompt needs labelled examples of two or more classes ({len(examples)} "
            f"examples, {len(labels)} labels, {len(set(labels))} classes)."
        )
    if iterations < 1 or candidates < 1:
        raise ConfigError("iterations and candidates are at least 1.")


def _loss(
    model: PromptModel,
    batch: dict[str, torch.Tensor],
    vectors: torch.Tensor,
    slot: int | None,
) -> tuple[float, torch.Tensor | None]:
    """The batch loss with ``vectors`` in the slots, and its gradient at ``slot``."""
    table = model.prompts.table
    with torch.no_grad():
        table.copy_(vectors.to(table.dtype))
    loss = model.task.loss(model(batch), batch["labels"])
    if slot is None:
        return float(loss), None
    (gradient,) = torch.autograd.grad(loss, table)
    return float(loss.detach()), gradient[slot].to(vectors.dtype)


def _nearest(rows: torch.Tensor, embeddings: torch.Tensor, allowed: torch.Tensor) -> list[int]:
    """For each row, the allowed token whose embedding is nearest (by cosine)."""
    candidates = torch.nn.functional.normalize(embeddings[allowed].float(), dim=-1)
    similarity = torch.nn.functional.normalize(rows.float(), dim=-1) @ candidates.T
    return allowed[similarity.argmax(-1)].tolist()


def _written(template: Template, words: Sequence[str], seeded: bool) -> str:
    """The template's text with each soft slot replaced by its word (``seeded``: by a soft
    slot that starts from it)."""
    pieces = []
    for segment in template.segments():
        if segment.kind is SegmentKind.SOFT:
            word = words[segment.slot]
            piece = f"[P{segment.slot + 1}:{word}]" if seeded else word
            needs_space = pieces and not pieces[-1].endswith((" ", "\n"))
            pieces.append((" " if needs_space else "") + piece)
        elif segment.kind is SegmentKind.INPUT:
            pieces.append(f"<{segment.name}>")
        elif segment.kind is SegmentKind.MASK:
            pieces.append("[MASK]")
        else:
            pieces.append(segment.text.translate(_ESCAPED))
    return "".join(pieces)
