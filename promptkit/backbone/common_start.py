"""Positions every row starts with, run once.

On a causal decoder a position sees nothing after it, so positions that every row of a batch
starts with (the soft prompt of ``[P*20] <x>``, a fixed instruction) have the same hidden
states in every row. They run once, as a batch of one, and the rest of the batch reads them
from a key/value cache: the same outputs and gradients, for less work and fewer saved
activations. The backbone's output is put back together, so heads see every position.

It is off where it would change anything: a backbone that is not one stack of causal
self-attention (hybrids with recurrent layers), rotary scaling that depends on the length
(dynamic, LongRoPE), dropout or layer drop in training (one shared start would share its
noise), activation checkpointing (which drops the cache), a forward that already has a cache
(a decoding step), and left-padded batches on models with windowed attention (moving the
padding would move the window).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.utils import ModelOutput

from promptkit.backbone.prompting import PROMPTING_KWARG, carried

_SPLIT = ("inputs_embeds", "attention_mask", "position_ids")
_ATTENTION_KINDS = {"full_attention", "sliding_attention", "chunked_attention"}
_LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}


def common_start(batch: Mapping[str, torch.Tensor]) -> int:
    """How many leading real positions every row of a batch holds alike (same token, same
    soft slot), after any left padding and short of each row's last; 0 for a single row."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    first, lengths = _first_real(mask), mask.sum(1)
    columns = torch.arange(mask.shape[1], device=mask.device)
    inside = (columns >= first[:, None]) & (columns < (first + lengths)[:, None])
    span = int(lengths.min()) - 1
    if ids.shape[0] < 2 or span < 1 or not bool((inside == mask).all()):
        return 0
    starts = first[:, None] + columns[:span]
    same = (ids.gather(1, starts) == ids[:1].gather(1, starts[:1])).all(0)
    if "slot_ids" in batch:
        slots = batch["slot_ids"]
        same &= (slots.gather(1, starts) == slots[:1].gather(1, starts[:1])).all(0)
    return int(same.long().cumprod(0).sum())


class CommonStart:
    """Runs a forward's common start once, on a causal decoder, in the forwards whose
    ``Prompting`` (made by ``owner``) names its length (``common_start``)."""

    def __init__(self, model: PreTrainedModel, owner: object) -> None:
        self.owner = owner
        self.model = model
        base = model.base_model
        settings = model.config.get_text_config()
        self.applies = _causal_decoder(model) and not _length_dependent_rope(settings)
        self.windowed = _windowed(settings)
        self.dropout = _has_dropout(model)
        self._handles = (
            [
                base.register_forward_pre_hook(self._split, with_kwargs=True),
                base.register_forward_hook(self._join, with_kwargs=True),
            ]
            if self.applies
            else []
        )

    def length(self, batch: Mapping[str, torch.Tensor]) -> int:
        """How many leading positions of a batch to run once (0: none)."""
        if not self.applies or self.model.is_activation_checkpointing:
            return 0
        if self.dropout and self.model.training:
            return 0
        if self.windowed and bool(batch["attention_mask"][:, 0].eq(0).any()):
            return 0
        return common_start(batch)

    def _split(self, base: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        prompting = carried(kwargs, self.owner)
        if prompting is None or not prompting.common_start or not self._splittable(args, kwargs):
            return None
        n, mask = prompting.common_start, kwargs["attention_mask"]
        order, back = _orders(_first_real(mask.bool()), n, mask.shape[1])
        moved = {key: _take(kwargs[key], order) for key in _SPLIT if kwargs.get(key) is not None}
        done = dataclasses.replace(prompting, common_start=0)
        first = {key: value[:1, :n] for key, value in moved.items()}
        # forward, not __call__: hooks on the base model (a head's gather) are for the whole
        start = base.forward(*args, **{**kwargs, **first, "use_cache": True, PROMPTING_KWARG: done})
        cache = start.past_key_values
        if not _plain(cache):  # a kind of cache this does not know: run the forward whole
            return None
        cache.batch_repeat_interleave(mask.shape[0])
        rest = {key: value[:, n:] for key, value in moved.items() if key != "attention_mask"}
        done.start = _Ran(start, back)
        rest |= {"attention_mask": moved["attention_mask"], "past_key_values": cache}
        return args, {**kwargs, **rest, PROMPTING_KWARG: done}

    @staticmethod
    def _splittable(args: tuple, kwargs: dict) -> bool:
        """Whether a forward's inputs are ones the split knows how to cut: embeddings with
        their mask (and positions, under left padding), no cache yet, nothing else per
        position (GPT-2's LM passes ``input_ids=None`` by place)."""
        if any(arg is not None for arg in args) or kwargs.get("past_key_values") is not None:
            return False
        if set(_tensors(kwargs)) - set(_SPLIT) or kwargs.get("attention_mask") is None:
            return False
        padded_left = bool(kwargs["attention_mask"][:, 0].eq(0).any())
        positions = kwargs.get("position_ids")
        return not padded_left or (positions is not None and positions.shape[0] > 1)

    def _join(self, _base: nn.Module, _args: tuple, kwargs: dict, output: object) -> object:
        prompting = carried(kwargs, self.owner)
        if prompting is None or prompting.start is None:
            return None
        ran, prompting.start = prompting.start, None
        for key in ("last_hidden_state", "hidden_states"):
            if output.get(key) is not None:
                output[key] = _joined(ran.outputs[key], output[key], ran.back)
        if output.get("past_key_values") is not None:
            output["past_key_values"] = None  # repeated per row and reordered: no one's cache
        return output

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


@dataclass
class _Ran:
    """A common start that ran: its outputs (one row), and where each row's columns go
    back to (``None``: where they are)."""

    outputs: ModelOutput
    back: torch.Tensor | None


def _first_real(mask: torch.Tensor) -> torch.Tensor:
    """Each row's first attended column."""
    return mask.int().argmax(1)


def _orders(
    first: torch.Tensor, n: int, length: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The column order that brings each row's first ``n`` real columns to the front (left
    padding follows them: the same keys are seen, at the same positions), and the order
    that puts them back; ``None`` twice when no row is padded on the left."""
    if not bool(first.any()):
        return None, None
    columns = torch.arange(length, device=first.device).unsqueeze(0)
    first = first.unsqueeze(1)
    order = torch.where(columns < n, first + columns, columns - n)
    order = torch.where(columns < first + n, order, columns)
    back = torch.where(columns < first, columns + n, columns - first)
    back = torch.where(columns < first + n, back, columns)
    return order, back


def _take(values: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """``values`` (``[B, L]`` or ``[B, L, D]``) with each row's columns in ``order``."""
    if order is None:
        return values
    index = order if values.dim() == 2 else order.unsqueeze(-1).expand_as(values)
    return values.gather(1, index)


def _joined(
    start: torch.Tensor | tuple[torch.Tensor, ...],
    rest: torch.Tensor | tuple[torch.Tensor, ...],
    back: torch.Tensor | None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The start's states (one row) in front of every row of the rest's, each row's columns
    put back in their order."""
    if isinstance(rest, tuple):
        return tuple(_joined(s, r, back) for s, r in zip(start, rest, strict=True))
    return _take(torch.cat([start.expand(rest.shape[0], -1, -1), rest], 1), back)


def _tensors(kwargs: dict) -> list[str]:
    return [key for key, value in kwargs.items() if isinstance(value, torch.Tensor)]


def _causal_decoder(model: PreTrainedModel) -> bool:
    """Whether the backbone is one stack of causal self-attention: one causal attention
    per layer, and no layer of another kind (recurrent, convolutional)."""
    settings = model.config.get_text_config()
    flags = [m.is_causal for m in model.base_model.modules() if hasattr(m, "is_causal")]
    kinds = set(getattr(settings, "layer_types", None) or ["full_attention"])
    return (
        not model.config.is_encoder_decoder
        and len(flags) == settings.num_hidden_layers
        and all(flag is True for flag in flags)
        and kinds <= _ATTENTION_KINDS
    )


def _plain(cache: object) -> bool:
    """Whether a cache holds plain keys and values per layer (what can be repeated)."""
    return isinstance(cache, DynamicCache) and all(
        isinstance(layer, DynamicLayer) for layer in cache.layers
    )


def _length_dependent_rope(settings: object) -> bool:
    """Whether rotary positions are scaled by how long the input is (then the start, run
    alone, would see other frequencies)."""
    rope = getattr(settings, "rope_parameters", None) or getattr(settings, "rope_scaling", None)
    if not isinstance(rope, dict):
        return False
    per_kind = [v for v in rope.values() if isinstance(v, dict)] or [rope]
    return any(r.get("rope_type", r.get("type")) in _LENGTH_DEPENDENT_ROPE for r in per_kind)


def _windowed(settings: object) -> bool:
    """Whether some attention sees a window of positions (sliding or chunked)."""
    kinds = set(getattr(settings, "layer_types", None) or [])
    window = getattr(settings, "sliding_window", None) or getattr(
        settings, "attention_chunk_size", None
    )
    return bool(window) or bool(kinds - {"full_attention"})


def _has_dropout(model: PreTrainedModel) -> bool:
    """Whether training would drop anything: a dropout module, or a dropout or layer-drop
    rate in the config (attention dropout is often a rate the attention function reads)."""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    settings = model.config.get_text_config().to_dict()
    rates = (value for key, value in settings.items() if "drop" in key)
    return any(isinstance(rate, float) and rate > 0 for rate in rates)
