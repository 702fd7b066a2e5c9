"""Writing text answers: transformers' ``generate()`` with the prompts in place at every step.

The injector builds the first step's inputs as in training (soft slots in the input
embeddings); what reaches inside the backbone (prefixes, per-layer vectors) rides on every
forward of the call, so the key/value cache holds real tokens only and each decoding step
sees the prompts again. Prompts are batched with the padding side of training (left for a
decoder-only model), so an example gets the same tokens alone and in a padded batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from promptkit.placements.base import PROMPTING_KWARG
from promptkit.progress import track
from promptkit.seeding import seeded

if TYPE_CHECKING:
    from promptkit.model import PromptModel


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
    """
    config = model.head.decoding(overrides)
    encoded = model.encode(examples)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    texts = [""] * len(encoded)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    starts = range(0, len(order), batch_size)
    for start in track(starts, "writing", progress):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in model.collate([encoded[i] for i in chunk]).items()}
        kwargs = model.injector(batch, model.prompts())
        written = write(model.lm, model.backbone.tokenizer, kwargs, config, model.seed)
        for index, text in zip(chunk, written, strict=True):
            texts[index] = text
    model.train(was_training)
    return texts


def write(
    lm: nn.Module, tokenizer: Any, kwargs: dict[str, object], config: Any, seed: int
) -> list[str]:
    """The texts one batch's prompted inputs (an injector's ``kwargs``) lead ``lm`` to write,
    decoded as ``config`` (a generation head's config) says."""
    kwargs = dict(kwargs)
    kwargs.pop("position_ids", None)  # generate() numbers real tokens from the mask alike
    prompting = kwargs.pop(PROMPTING_KWARG, None)
    with carried(lm, prompting), seeded(seed):
        written = lm.generate(
            **kwargs,
            **config.decoding(),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=_pad_id(tokenizer),
            tokenizer=tokenizer,
        )
    return _decoded(tokenizer, written, config.stop)


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


def _decoded(tokenizer: Any, written: torch.Tensor, stop: Sequence[str]) -> list[str]:
    """The texts of the written tokens, each cut before its first stop string."""
    texts = tokenizer.batch_decode(written, skip_special_tokens=True)
    for word in stop:
        texts = [t.split(word, 1)[0] for t in texts]
    return [t.strip() for t in texts]
