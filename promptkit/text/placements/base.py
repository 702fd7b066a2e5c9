"""What every placement shares: the placement protocol, and feeding the input through the
embeddings with explicit positions. Backbone-specific code lives in the placements only.

A placement turns a batch and the prompt table's vectors into the keyword arguments of one
backbone forward, from its ``Contribution``: what the vectors put into the input embeddings,
before which layers, and into which attention modules. The contributions of several runs make
one forward over a batch that mixes their rows (``promptkit.serving.mixing``).

Whatever reaches inside the backbone travels in the forward's arguments
(``promptkit.backbone.prompting``), so several prompted models can share one backbone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from promptkit.backbone.layers import WithoutAutograd, layers_in_order
from promptkit.backbone.prompting import PROMPTING_KWARG, Prompting, carried
from promptkit.core.config import PromptsConfig
from promptkit.core.soft_prompts import SoftPrompts
from promptkit.core.trainable import first_trained_layer
from promptkit.errors import PromptkitError
from promptkit.text.slot_start import start_slots
from promptkit.text.template import Template

if TYPE_CHECKING:
    from promptkit.backbone.common_start import CommonStart
    from promptkit.backbone.loading import Backbone
    from promptkit.backbone.top_layer import TopLayer
    from promptkit.text.placements.prefix import Prefix

# Models that number positions from padding_idx + 1 (RoBERTa and its descendants).
_POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta", "camembert", "xmod", "roberta-prelayernorm"}


@dataclass
class Contribution:
    """What a placement puts into a forward, whatever the batch holds: ``inputs`` (``[S, D]``,
    a row per soft slot, spliced into the input embeddings where ``slot_ids`` name it; no rows
    when slots take no positions), ``layers`` (layer index -> ``[S, D]`` vectors that replace
    the slot positions' hidden states before that layer) and ``prefixes`` (attention module ->
    the keys and values put in front of its own)."""

    inputs: torch.Tensor
    layers: dict[int, torch.Tensor] = field(default_factory=dict)
    prefixes: dict[nn.Module, Prefix] = field(default_factory=dict)


class Placement:
    """Base of the placements: one subclass per placement, registered by name in
    ``promptkit.text.placements``.

    A subclass says what it accepts (its ``config`` section and ``check`` on the template),
    how wide its table rows are and how they start (``build_prompts``), whether soft slots
    take sequence positions, what the vectors put into a forward (``contribution``), and the
    first layer they reach (``first_prompted``). A placement that needs more than a
    contribution says defines ``forward_kwargs`` itself and sets ``mixable = False``: its runs
    then cannot share a batch with others on a ``Host``.

    In a forward that records gradients, the layers below the first one that needs autograd
    run without it (``skips_autograd``, on by default): below the first prompted layer
    when the prompts train, below the first layer holding a trainable parameter (all of
    them for a head alone). Outputs and gradients are the same; the frozen layers keep no
    activations and, under activation checkpointing, are neither recomputed nor gone
    through backwards.

    Args:
        config: the ``prompts`` section of the recipe.
        model: the backbone it prompts.
    """

    name: ClassVar[str]
    config: ClassVar[type[PromptsConfig]]
    takes_positions: ClassVar[bool] = True  # whether soft slots are sequence positions
    mixable: ClassVar[bool] = True  # whether its contribution is all it does (a Host mixes it)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.mixable and "forward_kwargs" in vars(cls):
            raise TypeError(
                f"{cls.__name__} defines forward_kwargs, which a batch mixing several runs on a "
                "Host would not run: define contribution() instead, or set mixable = False."
            )

    def __init__(self, config: PromptsConfig, model: PreTrainedModel) -> None:
        self.embed = model.get_input_embeddings()
        self.takes_position_ids = (
            "position_ids" in inspect.signature(model.base_model.forward).parameters
        )
        settings = model.config
        self.position_offset = (
            settings.pad_token_id + 1 if settings.model_type in _POSITIONS_AFTER_PADDING else 0
        )
        self.max_positions = _positions_of(settings.get_text_config()) - self.position_offset
        self.released = False
        self.skips_autograd = True
        self.model = model
        self.backbone_layers = layers_in_order(model)
        self._without_autograd = WithoutAutograd(self.backbone_layers, self._frozen_below)
        # placements whose forward they may speed up set these
        self.common_start: CommonStart | None = None
        self.top_layer: TopLayer | None = None

    @classmethod
    def check(cls, config: PromptsConfig, template: Template) -> None:
        """Check what the placement cannot take from a template, before any model loads."""

    @classmethod
    def random_start(
        cls, config: PromptsConfig, template: Template
    ) -> tuple[str, str | None] | None:
        """What of the prompts starts at random, and how to start it from words instead (None
        when nothing does): a slot starts as its ``init`` says."""
        for slot in template.slots:
            init = slot.init or f"@{config.init}"
            if init in ("@random", "@vocab"):
                name = (
                    "a [P*n] soft slot"
                    if slot.name.startswith("P*")
                    else f"soft slot [{slot.name}]"
                )
                how = "at random" if init == "@random" else "as a token sampled from the vocabulary"
                fix = "initialise the slots from words ([P1:great], [P*4:it was good])"
                return f"{name} starts {how}", fix
        return None

    @classmethod
    def slots_are_words(cls, encoded: bool) -> bool:
        """Whether each soft slot's vector is an input embedding of its own, so that a word
        can stand for it (AutoPrompt's triggers); ``encoded``: whether an encoder makes the
        vectors."""
        return False

    @property
    def width(self) -> int:
        """Size of one prompt-table row."""
        return self.embed.embedding_dim

    @property
    def first_prompted(self) -> int:
        """The first of ``self.backbone_layers`` whose forward the prompt vectors reach (the
        input's reach the first layer)."""
        return 0

    def build_prompts(
        self,
        config: PromptsConfig,
        template: Template,
        backbone: Backbone,
        collapsed: bool,
        generator: torch.Generator,
    ) -> SoftPrompts:
        """The prompt table (and encoder), initialised from the template's slots.

        Args:
            collapsed: a plain table, to load saved vectors into.
        """
        prompts = SoftPrompts(
            template.n_slots,
            self.width,
            "none" if collapsed else config.encoder,
            config.encoder_hidden,
            config.dropout,
        )
        embeddings = backbone.input_embeddings
        start_slots(prompts, template.slots, embeddings, backbone.tokenizer, config.init, generator)
        return prompts

    def __call__(
        self,
        batch: Mapping[str, torch.Tensor],
        vectors: torch.Tensor,
        read_at: torch.Tensor | None = None,
    ) -> dict[str, object]:
        """Forward kwargs of a batch with the prompt table's ``vectors`` injected.

        Args:
            read_at: ``[B, K]`` positions, when nothing but their last hidden states is read
                (the top layer may then run those only).
        """
        if self.released:
            raise PromptkitError(
                f"this {self.name} placement was released; build the model again to use it."
            )
        kwargs = self.forward_kwargs(batch, vectors)
        frozen = self.frozen_depth(vectors.requires_grad)
        shared = self.common_start.length(batch) if self.common_start else 0
        narrowed = read_at if self.top_layer and self.top_layer.narrows() else None
        if frozen or shared or narrowed is not None:
            prompting = kwargs.setdefault(PROMPTING_KWARG, Prompting(owner=self))
            prompting.frozen_below, prompting.common_start = frozen, shared
            prompting.read_at = narrowed
        return kwargs

    def frozen_depth(self, prompts_train: bool) -> int:
        """How many leading layers this forward can run without autograd: none when it
        records no gradients, else those below the first trainable parameter (of the
        backbone) and, when the prompts train, below the first prompted layer."""
        if not (self.skips_autograd and self.backbone_layers and torch.is_grad_enabled()):
            return 0
        first = first_trained_layer(self.backbone_layers, self.model)
        return min(first, self.first_prompted) if prompts_train else first

    def _frozen_below(self, kwargs: dict) -> int:
        prompting = carried(kwargs, self)
        return 0 if prompting is None else prompting.frozen_below

    def forward_kwargs(
        self, batch: Mapping[str, torch.Tensor], vectors: torch.Tensor
    ) -> dict[str, object]:
        """Forward kwargs of a batch with ``vectors`` where the contribution puts them."""
        part = self.contribution(vectors, batch)
        kwargs = self.embedded(batch, part.inputs)
        if part.layers or part.prefixes:
            slot_ids = batch["slot_ids"]
            layers = {index: (rows, slot_ids) for index, rows in part.layers.items()}
            kwargs[PROMPTING_KWARG] = Prompting(self, prefixes=part.prefixes, layers=layers)
        return kwargs

    def contribution(
        self, vectors: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> Contribution:
        """What the prompt table's ``vectors`` put into a forward (``batch``: the one it
        runs, or empty when it mixes the rows of several runs)."""
        raise NotImplementedError

    def release(self) -> None:
        """Undo what the placement did to the backbone; using it afterwards is an error."""
        self._without_autograd.remove()
        for speedup in (self.common_start, self.top_layer):
            if speedup is not None:
                speedup.remove()
        self.released = True

    def embedded(
        self, batch: Mapping[str, torch.Tensor], vectors: torch.Tensor | None = None
    ) -> dict[str, object]:
        """``inputs_embeds`` (``vectors[slot_ids]`` spliced in where ``slot_ids >= 0``),
        the attention mask, and position ids counted over real tokens only, so left and
        right padding give the same result (models infer them from ``inputs_embeds``
        otherwise, blind to padding)."""
        attention_mask = batch["attention_mask"]
        embeds = self.embed(batch["input_ids"])
        if vectors is not None and vectors.numel():
            embeds = replace_slots(embeds, batch["slot_ids"], vectors)
        kwargs: dict[str, object] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
        if self.takes_position_ids:
            kwargs["position_ids"] = _positions(attention_mask) + self.position_offset
        return kwargs


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that number the real tokens from 0. Without left padding one row serves
    the batch, so rotary models build their cos/sin tables once, not once per row (which
    also keeps them out of the activations saved for backward)."""
    if bool(attention_mask[:, 0].all()):
        return torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _positions_of(settings: object) -> float:
    """How long an input the backbone's positions allow (unbounded without a table)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(settings, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return math.inf


def replaced_before_layer(key: int, owner: object) -> Callable:
    """A forward pre-hook for a layer: the hidden states of the slot positions ``owner``'s
    forwards name under ``key`` are replaced by their vectors (nothing happens in anyone
    else's forward, or in a decoding step whose slots sit in the key/value cache)."""

    def replace(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        prompting = carried(kwargs, owner)
        if prompting is None or key not in prompting.layers:
            return None
        vectors, slot_ids = prompting.layers[key]
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] != slot_ids.shape[1]:
            return None  # a decoding step: the slots sit in the key/value cache already
        if hidden.shape[0] != slot_ids.shape[0]:  # generate() repeats rows for beams
            slot_ids = slot_ids.repeat_interleave(hidden.shape[0] // slot_ids.shape[0], 0)
        hidden = replace_slots(hidden, slot_ids, vectors)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    return replace


def replace_slots(
    hidden: torch.Tensor, slot_ids: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``hidden`` with ``vectors[slot_ids]`` where ``slot_ids >= 0``."""
    slot_ids = slot_ids.to(hidden.device)  # a device map may put the layer on another device
    soft = vectors.to(hidden.device, hidden.dtype)[slot_ids.clamp(min=0)]
    return torch.where((slot_ids >= 0).unsqueeze(-1), soft, hidden)
