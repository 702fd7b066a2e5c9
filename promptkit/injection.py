"""Injectors put the soft prompts into a backbone. All backbone-specific code lives here.

- ``InputInjector`` (prompt tuning, P-tuning v1): soft slots are positions of the input
  sequence whose embeddings come from the prompt table instead of the token embeddings.
- ``PrefixInjector`` (prefix tuning, P-tuning v2): soft slots take no position; each selected
  layer's attention sees extra keys and values in front of the real ones. It works through an
  attention function registered with transformers (``promptkit_sdpa`` / ``promptkit_eager``)
  that wraps the stock one, so there is no cache, no position shift, no outside mask surgery,
  and activation checkpointing recomputes it like any other layer.
- ``DeepInjector`` (deep infix prompts, the text twin of VPT-deep): soft slots are input
  positions, and before each selected layer their hidden states are replaced by that layer's
  own vectors (forward pre-hooks on the layers).
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import eager_mask, sdpa_mask

from promptkit.errors import ConfigError

# Models that number positions from padding_idx + 1 (RoBERTa and its descendants).
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "camembert", "xmod", "roberta-prelayernorm"}


class InputInjector:
    """Builds the keyword arguments of a backbone forward with soft slots in the input.

    Position ids are passed explicitly, counted over real tokens only, so left and right
    padding give the same result (models infer them from ``inputs_embeds`` otherwise, blind
    to padding). The deep injectors extend it: ``arm`` hands the layers their share of the
    prompts and returns what goes into the input.
    """

    soft_positions = True  # whether soft slots are sequence positions

    def __init__(self, model: PreTrainedModel) -> None:
        _claim(model, self.release)
        self.embed = model.get_input_embeddings()
        base = model.base_model
        self.takes_positions = "position_ids" in inspect.signature(base.forward).parameters
        config = model.config
        self.position_offset = (
            config.pad_token_id + 1 if config.model_type in _POSITIONS_AFTER_PADDING else 0
        )

    @property
    def width(self) -> int:
        """Size of one prompt-table row."""
        return self.embed.embedding_dim

    def arm(self, prompts: torch.Tensor, slot_ids: torch.Tensor) -> torch.Tensor:
        """Hand the layers their vectors for the next forwards; return the input vectors."""
        return prompts

    def release(self) -> None:
        """Undo what the injector did to the backbone (when another one takes it over)."""

    def __call__(
        self,
        input_ids: torch.Tensor,
        slot_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompts: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Forward kwargs of a batch, the prompt table's vectors ``prompts`` injected."""
        return self.forward_kwargs(input_ids, slot_ids, attention_mask, self.arm(prompts, slot_ids))

    def forward_kwargs(
        self,
        input_ids: torch.Tensor,
        slot_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vectors: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Forward kwargs with ``vectors[slot_ids]`` spliced in where ``slot_ids >= 0``."""
        embeds = self.embed(input_ids)
        if vectors.numel():
            embeds = _replace_slots(embeds, slot_ids, vectors)
        kwargs = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if self.takes_positions:
            kwargs["position_ids"] = _positions(attention_mask) + self.position_offset
        return kwargs


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that number the real tokens from 0. Without left padding one row serves
    the batch, so rotary models build their cos/sin tables once, not once per row (which
    also keeps them out of the activations saved for backward)."""
    if bool(attention_mask[:, 0].all()):
        return torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# Backbone -> how to undo the injector that prompts it now: one injector per backbone at a time.
_CLAIMS: weakref.WeakKeyDictionary[nn.Module, Callable[[], None]] = weakref.WeakKeyDictionary()


def _claim(model: PreTrainedModel, release: Callable[[], None]) -> None:
    """Make an injector the backbone's only one: undo the hooks or attention of the last."""
    previous = _CLAIMS.pop(model, None)
    if previous is not None:
        previous()
    _CLAIMS[model] = release


def _replace_slots(
    hidden: torch.Tensor, slot_ids: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``hidden`` with ``vectors[slot_ids]`` where ``slot_ids >= 0``."""
    soft = vectors.to(hidden.dtype)[slot_ids.clamp(min=0)]
    return torch.where((slot_ids >= 0).unsqueeze(-1), soft, hidden)


def n_layers(model: PreTrainedModel) -> int:
    """How many transformer layers the backbone has."""
    return model.config.get_text_config().num_hidden_layers


class DeepInjector(InputInjector):
    """Replaces the hidden states of the soft slots before each selected layer.

    A prompt-table row holds one vector per prompted layer: layer 0's enters through the input
    embeddings (as in prompt tuning); each selected layer ``l >= 1`` gets its own through a
    forward pre-hook on that layer.

    Args:
        model: the backbone.
        layers: the selected layer indices (0 is always prompted through the input).
    """

    def __init__(self, model: PreTrainedModel, layers: Sequence[int]) -> None:
        blocks = _layer_list(model)
        super().__init__(model)
        self.layers = [0, *(i for i in layers if i > 0)]
        self._vectors: torch.Tensor | None = None
        self._slot_ids: torch.Tensor | None = None
        self._handles = [
            blocks[index].register_forward_pre_hook(self._hook(depth), with_kwargs=True)
            for depth, index in enumerate(self.layers[1:], start=1)
        ]

    @property
    def width(self) -> int:
        """Size of one prompt-table row: a hidden-size vector per prompted layer."""
        return len(self.layers) * self.embed.embedding_dim

    def arm(self, prompts: torch.Tensor, slot_ids: torch.Tensor) -> torch.Tensor:
        """Keep the later layers' vectors for the hooks; return layer 0's."""
        self._vectors = prompts.view(prompts.shape[0], len(self.layers), -1)
        self._slot_ids = slot_ids
        return self._vectors[:, 0]

    def release(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()

    def _hook(self, depth: int) -> Callable:
        def replace(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if self._vectors is None:
                return args, kwargs
            vectors = self._vectors[:, depth]
            if args:
                return (_replace_slots(args[0], self._slot_ids, vectors), *args[1:]), kwargs
            hidden = _replace_slots(kwargs["hidden_states"], self._slot_ids, vectors)
            return args, {**kwargs, "hidden_states": hidden}

        return replace


def _layer_list(model: PreTrainedModel) -> nn.ModuleList:
    count = n_layers(model)
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ConfigError(
        f"cannot find the {count} layers of {type(model).__name__}: deep prompts need a "
        "backbone whose layers are one ModuleList (BERT, RoBERTa, GPT-2, Llama and most "
        "others). Use `prompts.placement: input`."
    )


@dataclass
class _Prefix:
    key: torch.Tensor  # [H_kv, P, Dh]
    value: torch.Tensor
    visible: torch.Tensor | None  # [B, P] bool, None when every prefix position is visible

    def extend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values and mask with the prefix in front of the real positions."""
        batch, n_prefix = key.shape[0], self.key.shape[1]
        prefix_key = self.key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        prefix_value = self.value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        q_len, kv_len = query.shape[2], key.shape[2]
        causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        if mask is None and causal and q_len > 1:
            # sdpa skipped the causal mask; with more keys than queries it would misalign it.
            rows = torch.arange(q_len, device=key.device).unsqueeze(-1)
            mask = (rows + kv_len - q_len >= torch.arange(kv_len, device=key.device))[None, None]
        if mask is not None or self.visible is not None:
            visible = self.visible
            if visible is None:
                visible = torch.ones(batch, n_prefix, dtype=torch.bool, device=key.device)
            mask = _prefix_mask_columns(mask, visible, q_len, kv_len)
        return (
            torch.cat([prefix_key, key], dim=2),
            torch.cat([prefix_value, value], dim=2),
            mask,
        )


def _prefix_mask_columns(
    mask: torch.Tensor | None, visible: torch.Tensor, q_len: int, kv_len: int
) -> torch.Tensor:
    """Prepend the prefix's columns to a 4D mask (boolean, or additive float for eager)."""
    batch = visible.shape[0]
    columns = visible[:, None, None, :].expand(batch, 1, q_len, -1)
    if mask is None:
        mask = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool, device=visible.device)
    mask = mask.expand(batch, -1, q_len, -1)
    if mask.dtype != torch.bool:
        blocked = torch.finfo(mask.dtype).min
        columns = torch.zeros(columns.shape, dtype=mask.dtype).masked_fill(~columns, blocked)
    return torch.cat([columns.to(mask.device), mask], dim=-1)


# Attention module -> its current prefix. Weak keys: a discarded model takes its prefixes along.
_PREFIXES: weakref.WeakKeyDictionary[nn.Module, _Prefix] = weakref.WeakKeyDictionary()


def _stock_attention(implementation: str, module: nn.Module) -> Callable:
    if implementation == "sdpa":
        return sdpa_attention_forward
    return sys.modules[type(module).__module__].eager_attention_forward


def _prefixed(implementation: str) -> Callable:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prefix = _PREFIXES.get(module)
        if prefix is not None:
            key, value, attention_mask = prefix.extend(
                module, query, key, value, attention_mask, kwargs.get("is_causal")
            )
        stock = _stock_attention(implementation, module)
        return stock(module, query, key, value, attention_mask, **kwargs)

    return attention


for _implementation, _mask in (("sdpa", sdpa_mask), ("eager", eager_mask)):
    AttentionInterface.register(f"promptkit_{_implementation}", _prefixed(_implementation))
    AttentionMaskInterface.register(f"promptkit_{_implementation}", _mask)


class PrefixInjector(InputInjector):
    """Key/value prefixes at the selected layers (prefix tuning, P-tuning v2).

    The prompt table has one row per prefix position; a row holds, for each selected layer,
    its key then its value (``[layers, 2, H_kv, Dh]`` flattened: the layout of PEFT's prefix
    encoder). Real tokens keep their positions and need no longer attention mask.

    Args:
        model: the backbone; its attention is switched to promptkit's wrapper of the same kind.
        layers: the selected layer indices.
    """

    soft_positions = False

    def __init__(self, model: PreTrainedModel, layers: Sequence[int]) -> None:
        self.attention = _attention_modules(model)
        super().__init__(model)  # an earlier injector is undone: the original attention shows
        config = model.config.get_text_config()
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or (
            config.num_attention_heads
        )
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.layers = list(layers)
        self.model = model
        self.implementation = model.config._attn_implementation
        if self.implementation not in ("sdpa", "eager"):
            raise ConfigError(
                f"prefixes run on sdpa or eager attention, not {self.implementation!r}: load "
                "the backbone with attn_implementation='sdpa' (the default) or 'eager'."
            )
        model.set_attn_implementation(f"promptkit_{self.implementation}")

    @property
    def width(self) -> int:
        """Size of one prompt-table row: key and value at every selected layer."""
        return len(self.layers) * 2 * self.n_kv_heads * self.head_dim

    def arm(self, prompts: torch.Tensor, slot_ids: torch.Tensor) -> torch.Tensor:
        """Give the selected layers their prefix; nothing goes into the input."""
        self.set(prompts)
        return prompts[:, :0]

    def release(self) -> None:
        """Drop the prefixes and restore the stock attention."""
        for module in self.attention:
            _PREFIXES.pop(module, None)
        self.model.set_attn_implementation(self.implementation)

    def set(self, prompts: torch.Tensor, visible: torch.Tensor | None = None) -> None:
        """Arm the selected layers' attention with the prefix for the next forwards.

        Args:
            prompts: ``[P, width]``, the prompt table's vectors.
            visible: ``[B, P]`` which prefix positions each example attends to (default all).
        """
        n_prefix = prompts.shape[0]
        per_layer = prompts.view(
            n_prefix, len(self.layers), 2, self.n_kv_heads, self.head_dim
        ).permute(1, 2, 3, 0, 4)
        for vectors, index in zip(per_layer, self.layers, strict=True):
            _PREFIXES[self.attention[index]] = _Prefix(vectors[0], vectors[1], visible)


def _attention_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The self-attention module of each layer, by ``layer_idx``."""
    found: dict[int, nn.Module] = {}
    for module in model.base_model.modules():
        index = getattr(module, "layer_idx", None)
        inner = any(getattr(m, "layer_idx", None) is not None for m in module.children())
        if isinstance(index, int) and not inner:
            found.setdefault(index, module)
    count = n_layers(model)
    if not model._supports_attention_backend or sorted(found) != list(range(count)):
        raise ConfigError(
            f"{type(model).__name__} cannot take key/value prefixes: its attention does not go "
            "through transformers' attention interface with numbered layers (BERT, RoBERTa, "
            "GPT-2, Llama and others do). Use `prompts.placement: input` or `deep`."
        )
    return [found[i] for i in range(count)]
