"""The top layer at the positions the head reads, and nowhere else.

A classifier reads the last hidden state of one position ([CLS], the last token), a
verbalizer the one of its [MASK]. The layers below the top one must run every position,
since the top layer's attention reads their keys and values; the top layer itself need only
run the positions read. Its queries, attention output and feed-forward then cover those
positions, while its keys and values still cover every position (promptkit's attention
projects them from the layer's input, ``placements.attention``). The other positions of the
output are zero: nothing reads them.

It applies to encoders whose top layer feeds its input straight to an attention with
``key`` and ``value`` projections (BERT, RoBERTa, ELECTRA and the rest of that family),
which a probe of the layer checks once.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from promptkit.backbone.attention import pluggable, use_promptkit_attention
from promptkit.backbone.dispatch import stored
from promptkit.backbone.layers import layers_in_order
from promptkit.backbone.prompting import carried


class TopLayer:
    """Runs the backbone's top layer at ``Prompting.read_at`` only, in the forwards that
    ``owner``'s ``Prompting`` names those positions in."""

    def __init__(self, model: PreTrainedModel, owner: object) -> None:
        self.owner = owner
        self.model = model
        found = _top_attention(model)
        self.applies = found is not None and use_promptkit_attention(model, required=False)
        self._handles = []
        if self.applies:
            layer, self.attention = found
            self._handles = [
                layer.register_forward_pre_hook(self._narrow, with_kwargs=True),
                layer.register_forward_hook(self._widen, with_kwargs=True),
            ]

    def narrows(self) -> bool:
        """Whether a forward now may narrow the top layer (not under activation
        checkpointing, whose recomputation would not match)."""
        return self.applies and not self.model.is_activation_checkpointing

    def _narrow(self, _layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        prompting = carried(kwargs, self.owner)
        if prompting is None or prompting.read_at is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        prompting.full_inputs[self.attention] = hidden
        narrow = _rows(hidden, prompting.read_at)
        args, kwargs = _replaced(args, kwargs, 0, "hidden_states", narrow)
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-2] > 1:
            narrow_mask = _mask_rows(mask, prompting.read_at)
            args, kwargs = _replaced(args, kwargs, 1, "attention_mask", narrow_mask)
        return args, kwargs

    def _widen(self, _layer: nn.Module, _args: tuple, kwargs: dict, output: object) -> object:
        prompting = carried(kwargs, self.owner)
        if prompting is None or self.attention not in prompting.full_inputs:
            return None
        full = prompting.full_inputs.pop(self.attention)
        narrow = output[0] if isinstance(output, tuple) else output
        index = prompting.read_at.unsqueeze(-1).expand(-1, -1, narrow.shape[-1])
        # A position read twice ran twice, alike: the mean keeps its gradient from doubling.
        wide = narrow.new_zeros(full.shape).scatter_reduce(
            1, index, narrow, "mean", include_self=False
        )
        return (wide, *output[1:]) if isinstance(output, tuple) else wide

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()


def _rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``hidden[b, positions[b]]``: ``[B, K, D]``."""
    return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def _mask_rows(mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The query rows of a 4D mask ``[B or 1, H or 1, L, L_kv]`` at ``positions``."""
    wide = mask.expand(positions.shape[0], -1, -1, -1)
    index = positions[:, None, :, None].expand(-1, wide.shape[1], -1, wide.shape[-1])
    return wide.gather(2, index)


def _replaced(
    args: tuple, kwargs: dict, place: int, name: str, value: torch.Tensor
) -> tuple[tuple, dict]:
    """A call's arguments with one of them (given by place or by name) replaced."""
    if len(args) > place:
        return (*args[:place], value, *args[place + 1 :]), kwargs
    return args, {**kwargs, name: value}


def _top_attention(model: PreTrainedModel) -> tuple[nn.Module, nn.Module] | None:
    """The top layer and its attention, when the layer feeds its input straight to that
    attention's ``key`` and ``value`` projections (checked by running it once)."""
    layers = layers_in_order(model)
    if model.config.is_encoder_decoder or not layers:
        return None
    found = [
        m
        for m in layers[-1].modules()
        if pluggable(m)
        and getattr(m, "is_causal", None) is False
        and isinstance(getattr(m, "attention_head_size", None), int)
        and all(isinstance(getattr(m, name, None), nn.Linear) for name in ("key", "value"))
    ]
    if len(found) != 1:
        return None
    return (layers[-1], found[0]) if _reads_its_input(layers[-1], found[0]) else None


@torch.no_grad()
def _reads_its_input(layer: nn.Module, attention: nn.Module) -> bool:
    """Whether ``attention`` receives exactly the layer's input (no norm in between)."""
    seen: list[torch.Tensor] = []
    weight = stored(attention.key)
    hidden = torch.linspace(-1, 1, 2 * weight.shape[1], dtype=weight.dtype, device=weight.device)
    hidden = hidden.view(1, 2, -1)
    handle = attention.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True,
    )
    was_training = layer.training
    layer.eval()  # no dropout: the probe draws no random numbers
    try:
        layer(hidden)
    except Exception:  # a layer that cannot run alone is not narrowed
        return False
    finally:
        handle.remove()
        layer.train(was_training)
    return len(seen) == 1 and torch.equal(seen[0], hidden)
