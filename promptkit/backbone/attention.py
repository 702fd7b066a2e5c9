"""promptkit's attention function: transformers' stock one (sdpa or eager), given what a
forward carries in its ``Prompting``.

It is registered with transformers on first use (``promptkit_sdpa`` / ``promptkit_eager``)
and a backbone switched to it (``use_promptkit_attention``). For an attention module that a
forward names, it puts the prefix in front of the keys and values (``placements.prefix``),
takes the keys and values of every position from the layer's input when the layer runs only
some positions (``placements.top_layer``), and hands the attention's own keys and values to
whoever asked (``captured``). A forward that carries nothing gets the stock attention; so
does activation checkpointing, which recomputes it like any other layer.

On CPU, grouped-query attention under a mask runs on the shared key/value heads: transformers
repeats them per query head whenever there is a mask (some GPU kernels need that), which on
CPU costs time and keeps the repeated copies for the backward pass.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask, sdpa_mask

from promptkit.backbone.prompting import PROMPTING_KWARG, Prompting
from promptkit.errors import ConfigError

_STOCK = ("sdpa", "eager")


def use_promptkit_attention(model: PreTrainedModel, required: bool = True) -> bool:
    """Switch a backbone to promptkit's attention (once); whether it now runs it. An
    attention other than sdpa or eager is an error when ``required``, else left alone."""
    implementation = model.config._attn_implementation
    if implementation.startswith("promptkit_"):  # another placement switched it already
        return True
    if implementation not in _STOCK:
        if not required:
            return False
        raise ConfigError(
            f"prefixes run on sdpa or eager attention, not {implementation!r}: load "
            "the backbone with attn_implementation='sdpa' (the default) or 'eager'."
        )
    model.set_attn_implementation(_registered(implementation))
    return True


def shares_key_value_heads(model: PreTrainedModel) -> bool:
    """Whether the backbone runs grouped-query attention on sdpa (where promptkit's attention
    keeps the shared key/value heads under a mask, on CPU)."""
    settings = model.config.get_text_config()
    groups = getattr(settings, "num_key_value_heads", None)
    heads = getattr(settings, "num_attention_heads", None)
    grouped = isinstance(groups, int) and isinstance(heads, int) and groups < heads
    return grouped and model.config._attn_implementation in ("sdpa", "promptkit_sdpa")


def pluggable(module: nn.Module) -> bool:
    """Whether an attention module looks its attention function up in transformers'
    registry (so promptkit's can take its place)."""
    return "ALL_ATTENTION_FUNCTIONS" in vars(sys.modules[type(module).__module__])


def _stock_attention(implementation: str, module: nn.Module) -> Callable:
    if implementation == "sdpa":
        return sdpa_attention_forward
    return sys.modules[type(module).__module__].eager_attention_forward


@functools.cache
def _registered(implementation: str) -> str:
    """Register promptkit's wrapper of a stock attention (once); return its name."""

    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prompting = kwargs.pop(PROMPTING_KWARG, None)
        if isinstance(prompting, Prompting):
            key, value, attention_mask = _carried(
                prompting, module, query, key, value, attention_mask, kwargs
            )
        if implementation == "sdpa" and _grouped_on_cpu(module, query, attention_mask, kwargs):
            return _grouped_sdpa(query, key, value, attention_mask, **kwargs)
        stock = _stock_attention(implementation, module)
        return stock(module, query, key, value, attention_mask, **kwargs)

    name = f"promptkit_{implementation}"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask if implementation == "sdpa" else eager_mask)
    return name


def _carried(
    prompting: Prompting,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    kwargs: dict,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys, values and mask with what the forward carries for this module."""
    source = prompting.full_inputs.get(module)
    if source is not None:
        key, value = (_heads(module, project(source)) for project in (module.key, module.value))
    if prompting.captured is not None:
        prompting.captured[module] = (key, value)
    prefix = prompting.prefixes.get(module)
    if prefix is not None:
        key, value, mask = prefix.extend(module, query, key, value, mask, kwargs.get("is_causal"))
        if kwargs.get("position_bias") is not None:
            kwargs["position_bias"] = prefix.bias(kwargs["position_bias"])
    return key, value, mask


def _heads(module: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """A projection ``[B, L, H * Dh]`` as ``[B, H, L, Dh]`` (BERT's layout)."""
    return projected.view(*projected.shape[:2], -1, module.attention_head_size).transpose(1, 2)


def _grouped_on_cpu(
    module: nn.Module, query: torch.Tensor, mask: torch.Tensor | None, kwargs: dict
) -> bool:
    """Whether this call is grouped-query attention under a mask on CPU, which torch runs
    without repeating the key/value heads (and nothing stock-only is asked for)."""
    return (
        mask is not None
        and query.device.type == "cpu"
        and getattr(module, "num_key_value_groups", 1) > 1
        and query.shape[2] > 1
        and kwargs.get("position_bias") is None
        and not kwargs.get("softcap")
        and not kwargs.get("output_attentions")
    )


def _grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    dropout: float = 0.0,
    scaling: float | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None
