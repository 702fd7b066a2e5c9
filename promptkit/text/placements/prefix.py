"""Prefix placement (prefix tuning, P-tuning v2): soft slots take no position; each selected
layer's attention sees extra keys and values in front of the real ones.

The prefixes enter through promptkit's attention function (``placements.attention``), which
reads each call's prefix from the forward's ``promptkit`` argument: no cache, no position
shift, no outside mask surgery, and activation checkpointing recomputes it like any other
layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from transformers import PreTrainedModel

from promptkit.backbone.attention import pluggable, use_promptkit_attention
from promptkit.backbone.layers import n_layers, select_layers
from promptkit.backbone.prompting import PROMPTING_KWARG, Prompting
from promptkit.backbone.top_layer import TopLayer
from promptkit.core.config import EncoderKind, LayeredPromptsConfig
from promptkit.core.soft_prompts import SoftPrompts
from promptkit.errors import ConfigError
from promptkit.text.placements.base import Contribution, Placement
from promptkit.text.slot_start import start_slots
from promptkit.text.template import Template

Attention = Literal["encoder", "decoder", "cross"]


class PrefixConfig(LayeredPromptsConfig):
    """``prompts`` of the prefix placement."""

    placement: Literal["prefix"] = "prefix"
    attention: list[Attention] | None = Field(
        None,
        description="encoder-decoders: which attentions get prefixes, any of encoder (self), "
        "decoder (self) and cross (default: all three)",
    )
    start: Literal["normal", "activations"] = Field(
        "normal",
        description="without an encoder, where the keys and values start: normal(0, 1) "
        "(P-tuning v2), or the backbone's own keys and values of the slots' words (tokens "
        "sampled from the vocabulary for slots that name none)",
    )

    @field_validator("encoder")
    @classmethod
    def _no_lstm(cls, value: EncoderKind) -> EncoderKind:
        if value == "lstm":
            raise ValueError(
                "lstm runs over input positions, which prefixes do not have: use mlp (prefix "
                "tuning's reparameterisation) or none (P-tuning v2)"
            )
        return value


class PrefixPlacement(Placement):
    """Key/value prefixes at the selected layers (prefix tuning, P-tuning v2).

    The prompt table has one row per prefix position; a row holds, for each selected layer,
    its key then its value (``[layers, 2, H_kv, Dh]`` flattened: the layout of PEFT's prefix
    encoder). Real tokens keep their positions and need no longer attention mask. Without an
    encoder the rows start normal(0, 1) as in P-tuning v2; with one (prefix tuning) the table
    is embedding-sized, starts like input prompts, and the MLP widens it.

    A batch may carry ``prefix_visible`` ``[B, P]``: which prefix positions each row sees.
    """

    name = "prefix"
    config = PrefixConfig
    takes_positions = False

    @classmethod
    def check(cls, config: PrefixConfig, template: Template) -> None:
        named = [s.name for s in template.slots if s.init and not s.init.startswith("@")]
        if named and config.encoder == "none" and config.start == "normal":
            raise ConfigError(
                f"soft slot [{named[0]}] starts from words, but a prefix without an encoder "
                "holds keys and values, not embeddings: start from the words' keys and values "
                "(`prompts.start: activations`), use `prompts.encoder: mlp`, or drop the words."
            )
        if config.start == "activations" and config.encoder != "none":
            raise ConfigError(
                "prompts.start: activations starts the keys and values themselves, which an "
                "encoder produces: drop prompts.encoder (none) or prompts.start."
            )

    @classmethod
    def random_start(
        cls, config: PrefixConfig, template: Template
    ) -> tuple[str, str | None] | None:
        if template.slots and (config.start != "activations" or config.encoder != "none"):
            return (
                "the prefix's keys and values start at random",
                "start them from the slots' words (prompts.start: activations, no encoder, "
                "and [P1:word] slots)",
            )
        return super().random_start(config, template)

    def __init__(self, config: PrefixConfig, model: PreTrainedModel) -> None:
        super().__init__(config, model)
        stacks = _attention_stacks(model)
        if config.attention is not None:
            if not model.config.is_encoder_decoder:
                raise ConfigError(
                    "prompts.attention chooses among an encoder-decoder's attentions; "
                    f"{type(model).__name__} has one stack: drop the key."
                )
            stacks = {name: stacks[name] for name in dict.fromkeys(config.attention)}
        self.targets = [
            modules[index]
            for modules in stacks.values()
            for index in select_layers(config.layers, len(modules))
        ]
        self.shapes = [_key_shape(module, model.config) for module in self.targets]
        use_promptkit_attention(model)
        self.top_layer = TopLayer(model, self)

    @property
    def width(self) -> int:
        """Size of one prompt-table row: key and value at every prefixed attention."""
        return sum(2 * heads * size for heads, size in self.shapes)

    @property
    def first_prompted(self) -> int:
        """The first layer that holds a prefixed attention."""
        targets = {id(module) for module in self.targets}
        reached = (
            index
            for index, layer in enumerate(self.backbone_layers)
            if any(id(module) in targets for module in layer.modules())
        )
        return next(reached, 0)

    def build_prompts(self, config, template, backbone, collapsed, generator) -> SoftPrompts:
        projected = config.encoder == "mlp" and not collapsed
        if projected:
            prompts = SoftPrompts(
                template.n_slots,
                self.width,
                "mlp",
                config.encoder_hidden,
                config.dropout,
                table_dim=backbone.hidden_size,
            )
            embeddings = backbone.input_embeddings
            start_slots(
                prompts, template.slots, embeddings, backbone.tokenizer, config.init, generator
            )
            return prompts
        prompts = SoftPrompts(template.n_slots, self.width, "none", None, config.dropout)
        if config.start == "activations":
            words = SoftPrompts(template.n_slots, backbone.hidden_size, "none", None, 0.0)
            embeddings = backbone.input_embeddings
            start_slots(
                words, template.slots, embeddings, backbone.tokenizer, config.init, generator
            )
            prompts.table.data.copy_(self.activations(backbone.model, words.table.detach()))
        else:
            prompts.table.data.normal_(generator=generator)
        return prompts

    @torch.no_grad()
    def activations(self, model: PreTrainedModel, embeddings: torch.Tensor) -> torch.Tensor:
        """Table rows holding the keys and values each prefixed attention computes for a
        sequence of ``embeddings`` ``[P, D]`` (an encoder-decoder's decoder reads them too):
        the prefix then starts as those words would be, in front of the input."""
        inputs = embeddings.to(model.dtype).unsqueeze(0)
        captured: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        kwargs = {"inputs_embeds": inputs, PROMPTING_KWARG: Prompting(self, captured=captured)}
        if model.config.is_encoder_decoder:
            kwargs["decoder_inputs_embeds"] = inputs
        was_training = model.training
        model.eval()
        try:
            model(**kwargs)
        finally:
            model.train(was_training)
        rows = [
            torch.stack([captured[m][0][0], captured[m][1][0]], 0).permute(2, 0, 1, 3)
            for m in self.targets
        ]  # each [P, 2, H_kv, Dh]
        return torch.cat([r.flatten(1) for r in rows], 1).float()

    def contribution(
        self, vectors: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> Contribution:
        """Nothing in the input (the slots take no positions); each selected layer's prefix
        at its attention."""
        return Contribution(
            vectors.new_zeros(0, self.embed.embedding_dim), prefixes=self.prefixes(vectors, batch)
        )

    def prefixes(
        self, vectors: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> dict[nn.Module, Prefix]:
        """Each prefixed attention module and its prefix (a row holds, in order, each one's
        key then value)."""
        n_prefix = vectors.shape[0]
        pieces = vectors.split([2 * heads * size for heads, size in self.shapes], dim=-1)
        visible = batch.get("prefix_visible")
        out = {}
        for module, (heads, size), piece in zip(self.targets, self.shapes, pieces, strict=True):
            key, value = piece.view(n_prefix, 2, heads, size).permute(1, 2, 0, 3)
            out[module] = Prefix(key, value, visible)
        return out


@dataclass
class Prefix:
    """Keys and values put in front of one attention module's own: ``[H_kv, P, Dh]`` shared
    by the batch, or ``[B, H_kv, P, Dh]``; ``visible`` ``[B, P]`` says which prefix positions
    each row attends to (None: all)."""

    key: torch.Tensor
    value: torch.Tensor
    visible: torch.Tensor | None = None

    def extend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys, values and mask with the prefix in front of the real positions (T5's
        relative position bias: see ``bias``)."""
        batch, n_prefix = key.shape[0], self.key.shape[-2]
        prefix_key = _per_row(self.key.to(key.device, key.dtype), batch)
        prefix_value = _per_row(self.value.to(value.device, value.dtype), batch)
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
            visible = _per_row(visible, batch)
            mask = _prefix_mask_columns(mask, visible, q_len, kv_len)
        return (
            torch.cat([prefix_key, key], dim=2),
            torch.cat([prefix_value, value], dim=2),
            mask,
        )

    def bias(self, position_bias: torch.Tensor) -> torch.Tensor:
        """A relative position bias (T5) with columns for the prefix: zero, since prefix
        positions have no place in the sequence to be near or far from."""
        columns = position_bias.new_zeros((*position_bias.shape[:-1], self.key.shape[-2]))
        return torch.cat([columns, position_bias], dim=-1)


def _per_row(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """A prefix tensor with a leading row per batch row: one shared by the batch
    (``[H_kv, P, Dh]``) expanded, one per row repeated as generate() repeats rows for beams
    (each row's copies next to each other)."""
    if tensor.dim() == 3:
        return tensor.expand(batch, -1, -1, -1)
    return tensor.repeat_interleave(batch // tensor.shape[0], 0)


def _prefix_mask_columns(
    mask: torch.Tensor | None, visible: torch.Tensor, q_len: int, kv_len: int
) -> torch.Tensor:
    """Prepend the prefix's columns to a 4D mask (boolean, or additive float for eager)."""
    batch = visible.shape[0]
    if mask is None:
        mask = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool, device=visible.device)
    columns = visible.to(mask.device)[:, None, None, :].expand(batch, 1, q_len, -1)
    mask = mask.expand(batch, -1, q_len, -1)
    if mask.dtype != torch.bool:
        blocked = torch.finfo(mask.dtype).min
        columns = torch.zeros_like(columns, dtype=mask.dtype).masked_fill(~columns, blocked)
    return torch.cat([columns, mask], dim=-1)


def _attention_stacks(model: PreTrainedModel) -> dict[str, list[nn.Module]]:
    """The attention modules of each layer, by stack: "self" for a one-stack model; for an
    encoder-decoder, "encoder" (self-attention), "decoder" (causal self-attention) and
    "cross" (the decoder's attention over the encoder)."""
    if not model.config.is_encoder_decoder:
        return {"self": _numbered(model.base_model, n_layers(model), model)}
    decoder = _numbered(model.get_decoder(), None, model, both=True)
    return {
        "encoder": _numbered(model.get_encoder(), None, model),
        "decoder": [m for m in decoder if getattr(m, "is_causal", False)],
        "cross": [m for m in decoder if not getattr(m, "is_causal", False)],
    }


def _numbered(
    root: nn.Module, count: int | None, model: PreTrainedModel, both: bool = False
) -> list[nn.Module]:
    """The attention modules under ``root``, in layer order (``both``: two per layer, self
    then cross). Each must go through transformers' attention interface."""
    found: dict[int, list[nn.Module]] = {}
    for module in root.modules():
        index = getattr(module, "layer_idx", None)
        inner = any(getattr(m, "layer_idx", None) is not None for m in module.children())
        if isinstance(index, int) and not inner and pluggable(module):
            found.setdefault(index, []).append(module)
    count = len(found) if count is None else count
    per_layer = 2 if both else 1
    if (
        not found
        or sorted(found) != list(range(count))
        or any(len(modules) < per_layer for modules in found.values())
    ):
        raise ConfigError(
            f"{type(model).__name__} cannot take key/value prefixes: its attention does not go "
            "through transformers' attention interface with numbered layers (BERT, RoBERTa, "
            "GPT-2, Llama, T5, BART and others do). Use `prompts.placement: input` or `deep`."
        )
    return [m for i in range(count) for m in found[i][:per_layer]]


def _key_shape(module: nn.Module, config: object) -> tuple[int, int]:
    """Key/value heads and head size of one attention module."""
    settings = config.get_text_config()
    heads = getattr(settings, "num_key_value_heads", None) or next(
        getattr(module, name)
        for name in ("n_heads", "num_heads", "num_attention_heads")
        if isinstance(getattr(module, name, None), int)
    )
    for name in ("head_dim", "key_value_proj_dim", "attention_head_size"):
        if isinstance(getattr(module, name, None), int):
            return heads, getattr(module, name)
    return heads, settings.hidden_size // settings.num_attention_heads
