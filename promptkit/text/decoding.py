"""Writing text answers: transformers' ``generate()`` with the prompts in place at every step.

The placement builds the first step's inputs as in training (soft slots in the input
embeddings); what reaches inside the backbone (prefixes, per-layer vectors) rides on every
forward of the call, so the key/value cache holds real tokens only and each decoding step
sees the prompts again. Prompts are batched with the padding side of training (left for a
decoder-only model), so an example gets the same tokens alone and in a padded batch.

An answer starts at its first non-whitespace character, and stop strings are looked for from
there on, both while decoding and after: a newline the model writes before its first word
does not end the answer. An answer that comes back empty is counted with its cause.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from promptkit.backbone.prompting import PROMPTING_KWARG
from promptkit.core.progress import track
from promptkit.core.seeding import seeded
from promptkit.errors import EmptyAnswersWarning

if TYPE_CHECKING:
    from promptkit.text.model import PromptModel

# Why an answer came back empty, and what to do about it.
EMPTY_CAUSES = {
    "end": "the end token came first: train longer, or end the template with words that "
    "invite the answer",
    "stop": "a stop string came before any text: change or drop it (stop=[], on the command "
    "line --decoding 'stop=[]')",
    "whitespace": "only whitespace was written: raise max_new_tokens, or train longer",
}


@dataclass(frozen=True)
class Written:
    """One written answer, and why it is empty (a key of ``EMPTY_CAUSES``; None when it
    holds text)."""

    text: str
    empty: str | None = None


@torch.inference_mode()
def generate(
    model: PromptModel,
    examples: Sequence[Mapping[str, object]],
    batch_size: int = 16,
    progress: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """The answer each example's prompt leads the model to write.

    Args:
        model: a prompt model with a generation head.
        examples: bound examples (``model.examples``).
        batch_size: prompts decoded together.
        progress: show a progress bar.
        overrides: decoding options that replace the head's (``num_beams=4``, ...).

    Empty answers are counted in an ``EmptyAnswersWarning``, with their likely cause.
    """
    config = model.head.decoding(overrides)
    encoded = model.encode(examples)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers = [Written("")] * len(encoded)
    was_training = model.training
    model.eval()
    device = model.device
    starts = range(0, len(order), batch_size)
    for start in track(starts, "writing", progress):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in model.collate([encoded[i] for i in chunk]).items()}
        kwargs = model.placement(batch, model.prompts())
        written = write(model.lm, model.backbone.tokenizer, kwargs, config, model.seed)
        for index, answer in zip(chunk, written, strict=True):
            answers[index] = answer
    model.train(was_training)
    warn_empty([answer.empty for answer in answers])
    return [answer.text for answer in answers]


def write(
    lm: nn.Module, tokenizer: Any, kwargs: dict[str, object], config: Any, seed: int
) -> list[Written]:
    """The answers one batch's prompted inputs (a placement's ``kwargs``) lead ``lm`` to
    write, decoded as ``config`` (a generation head's config) says."""
    kwargs = dict(kwargs)
    kwargs.pop("position_ids", None)  # generate() numbers real tokens from the mask alike
    prompting = kwargs.pop(PROMPTING_KWARG, None)
    stopping = StoppingCriteriaList([StopInAnswer(tokenizer, config.stop)] if config.stop else [])
    with carried(lm, prompting), seeded(seed):
        written = lm.generate(
            **kwargs,
            **config.decoding(),
            stopping_criteria=stopping,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=_pad_id(tokenizer),
        )
    texts = tokenizer.batch_decode(written, skip_special_tokens=True)
    return [_answer(text, config.stop) for text in texts]


def _answer_in(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The answer in a written text: from its first non-whitespace character up to the
    first stop string from there on; and whether a stop string ended it."""
    text = text.lstrip()
    ends = [i for i in (text.find(word) for word in stop) if i >= 0]
    return (text[: min(ends)] if ends else text).rstrip(), bool(ends)


def _answer(text: str, stop: Sequence[str]) -> Written:
    """The answer in a written text (without the special tokens), and why it is empty."""
    answer, _ = _answer_in(text, stop)
    if answer:
        return Written(answer)
    return Written("", "end" if not text else "whitespace" if not text.strip() else "stop")


class StopInAnswer(StoppingCriteria):
    """Ends a row once its answer holds a stop string, by the rule of ``_answer_in`` (unlike
    transformers' ``stop_strings``, whitespace before the first word does not end it). The
    rows are what generate() writes: the placements give the prompt as embeddings, so only
    the new tokens, after an encoder-decoder's special start token.

    Args:
        tokenizer: the backbone's tokenizer.
        stop: the stop strings.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, list(stop)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        ended = [_answer_in(text, self.stop)[1] for text in texts]
        return torch.tensor(ended, dtype=torch.bool, device=input_ids.device)


def empty_report(empty: Sequence[str | None]) -> str | None:
    """A line that counts the empty answers by cause (``empty``: each answer's
    ``Written.empty``), with the fix for each; None when every answer holds text."""
    causes = Counter(cause for cause in empty if cause)
    if not causes:
        return None
    shown = "; ".join(f"{n} because {EMPTY_CAUSES[cause]}" for cause, n in causes.items())
    return f"{causes.total()} of {len(empty)} answers are empty: {shown}"


def warn_empty(empty: Sequence[str | None]) -> None:
    """An ``EmptyAnswersWarning`` when some answers are empty (``empty`` as in
    ``empty_report``)."""
    report = empty_report(empty)
    if report:
        warnings.warn(report, EmptyAnswersWarning, stacklevel=3)


@contextmanager
def carried(lm: nn.Module, prompting: object | None) -> Iterator[None]:
    """During a ``generate()`` call, every forward of the model (and of an encoder-decoder's
    encoder, which generate calls on its own) carries ``prompting``."""
    if prompting is None:
        yield
        return

    def carry(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, PROMPTING_KWARG: prompting}

    modules = [lm, *([lm.get_encoder()] if lm.config.is_encoder_decoder else [])]
    handles = [m.register_forward_pre_hook(carry, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
