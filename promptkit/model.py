"""PromptModel: a frozen backbone, its soft prompts, the injector and the head, as one module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from promptkit import catalog
from promptkit.backbone import Backbone, load_backbone
from promptkit.config import ModelConfig
from promptkit.data import as_examples, collate
from promptkit.encoding import EncodedPrompt, PromptTokenizer
from promptkit.errors import ConfigError, TemplateError
from promptkit.heads import ClassifierHead, TokenClassifierHead, VerbalizerHead
from promptkit.injection import DeepInjector, InputInjector, PrefixInjector, n_layers
from promptkit.layers import select_layers
from promptkit.policy import PolicyModule, parameter_groups
from promptkit.prompts import SoftPrompts
from promptkit.seeding import seeded
from promptkit.template import Template
from promptkit.verbalizer import Verbalizer


class PromptModel(PolicyModule):
    """Everything that runs a prompt: ``model(batch)`` gives logits over ``model.classes``.

    Args:
        backbone: the pretrained model and tokenizer.
        template: the compiled template.
        prompts: the soft-slot vectors.
        injector: puts them into the backbone (``InputInjector`` or a deep one).
        head: a ``VerbalizerHead``, ``ClassifierHead`` or ``TokenClassifierHead``.
        trainable: the policy, any of "prompts", "head", "bias", "all".
        max_length: longest encoded sequence.
        padding_side: "left" or "right".
        inputs: input slot -> data column, as in training.
    """

    def __init__(
        self,
        backbone: Backbone,
        template: Template,
        prompts: SoftPrompts,
        injector: InputInjector,
        head: nn.Module,
        trainable: Sequence[str],
        max_length: int = 256,
        padding_side: str = "right",
        inputs: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.lm = backbone.model
        self.prompts = prompts
        self.head = head
        self.template = template
        self.padding_side = padding_side
        self.inputs = dict(inputs or {})
        self.injector = injector
        self.tokenizer = PromptTokenizer(
            template, backbone.tokenizer, max_length, backbone.is_causal, injector.soft_positions
        )
        self.groups = parameter_groups(prompts, head, backbone.model, trainable)

    @property
    def classes(self) -> list[str]:
        """Label names, in logit order."""
        return self.head.classes

    def examples(self, items: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Bind user inputs: a string fills the template's only input slot (split into words
        for a token head); a mapping is a data row (columns mapped to slots as in training)."""
        slots = self.template.inputs
        rows = []
        for item in items:
            if isinstance(item, str):
                if len(slots) != 1:
                    raise ConfigError(
                        f"the template has inputs {list(slots)}: pass mappings, not strings."
                    )
                words = item.split() if isinstance(self.head, TokenClassifierHead) else item
                item = {self.inputs.get(slots[0], slots[0]): words}
            rows.append(dict(item))
        return as_examples(rows, self.inputs, slots)

    def word_counts(self, examples: Sequence[Mapping[str, Any]]) -> list[int]:
        """How many words each example's word-list inputs hold (what a token head labels)."""
        return [
            sum(len(ex[s]) for s in self.template.inputs if isinstance(ex[s], list | tuple))
            for ex in examples
        ]

    def encode(self, examples: Sequence[Mapping[str, object]]) -> list[EncodedPrompt]:
        """Encode examples (mappings from input-slot names and Jinja fields to values)."""
        return self.tokenizer(examples)

    def collate(
        self, encoded: Sequence[EncodedPrompt], labels: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Pad encoded examples into a batch (the padding side suits the backbone)."""
        pad_id = self.backbone.tokenizer.pad_token_id
        return collate(encoded, 0 if pad_id is None else pad_id, self.padding_side, labels)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``[B, C]`` (``[B, W, C]`` per word for a token head) for a batch."""
        inputs = self.injector(
            batch["input_ids"], batch["slot_ids"], batch["attention_mask"], self.prompts()
        )
        return self.head(self.lm, inputs, batch)


@dataclass(frozen=True)
class CheckedRecipe:
    """A recipe whose template and head were checked without loading any model."""

    template: Template
    verbalizer: Verbalizer | None


def check_recipe(recipe: ModelConfig) -> CheckedRecipe:
    """Compile the template and the verbalizer, and check they fit each other."""
    source = recipe.template
    template = catalog.template(source)
    missing_inputs = [s for s in recipe.inputs if s not in template.inputs]
    if missing_inputs:
        raise ConfigError(
            f"inputs maps {missing_inputs} but the template has no such input "
            f"slot (it has {['<' + i + '>' for i in template.inputs]})."
        )
    _check_placement(recipe, template)
    if recipe.head.type != "verbalizer":
        return CheckedRecipe(template, None)
    if not template.has_mask:
        hint = (
            ""
            if template.slots or template.inputs
            else (
                f" No catalog template is named {source!r} either; known: "
                f"{', '.join(catalog.entries('templates'))}."
            )
        )
        raise TemplateError(
            f"{template.name} has no [MASK], but a verbalizer head reads its "
            f"answer there: add [MASK] (e.g. '<x> It was [MASK].').{hint}"
        )
    return CheckedRecipe(template, _verbalizer(recipe.head.verbalizer))


def _check_placement(recipe: ModelConfig, template: Template) -> None:
    prompts = recipe.prompts
    if prompts.placement != "prefix":
        return
    if prompts.encoder == "lstm":
        raise ConfigError(
            "prompts.encoder: lstm runs over input positions, which prefixes do not have: use "
            "mlp (prefix tuning's reparameterisation) or none (P-tuning v2)."
        )
    named = [s.name for s in template.slots if s.init and not s.init.startswith("@")]
    if named and prompts.encoder == "none":
        raise ConfigError(
            f"soft slot [{named[0]}] starts from words, but a prefix without an encoder holds "
            "keys and values, not embeddings: use `prompts.encoder: mlp`, or drop the words."
        )


def _verbalizer(spec: str | dict | None) -> Verbalizer:
    if spec is None:
        raise ConfigError(
            "head.verbalizer is missing: give {class: [words]}, a catalog name "
            f"({', '.join(catalog.entries('verbalizers'))}) or a YAML file."
        )
    if isinstance(spec, dict):
        return Verbalizer(spec)
    if catalog.has("verbalizers", spec):
        return Verbalizer(catalog.entry("verbalizers", spec)["words"])
    if spec.endswith((".yaml", ".yml")):
        return Verbalizer.from_yaml(spec)
    raise ConfigError(
        f"head.verbalizer {spec!r} is neither a catalog name "
        f"({', '.join(catalog.entries('verbalizers'))}) nor a YAML file."
    )


def build_model(
    recipe: ModelConfig,
    classes: Sequence[str] | None = None,
    backbone: Backbone | None = None,
    collapsed: bool = False,
) -> PromptModel:
    """Build a PromptModel from its recipe. Everything checkable is checked before loading.

    Args:
        recipe: the model part of a config.
        classes: label names for a classifier head (a verbalizer brings its own).
        backbone: an already loaded backbone (default: load ``recipe.backbone``).
        collapsed: build the prompts as a plain table (to load a saved prompt).
    """
    checked = check_recipe(recipe)
    if checked.verbalizer is None and not (classes or recipe.head.classes):
        raise ConfigError("a classifier head needs its labels: set head.classes or give data.")
    backbone = backbone or load_backbone(
        recipe.backbone.name, recipe.backbone.kind, recipe.backbone.dtype
    )
    template = checked.template
    if checked.verbalizer is not None and not backbone.has_lm_head:
        raise ConfigError(
            f"{backbone.name} is loaded as an encoder without an LM head, which "
            "a verbalizer needs: use `head: {type: classifier}` or an LM backbone."
        )
    injector = _injector(recipe.prompts.placement, recipe.prompts.layers, backbone.model)
    with seeded(recipe.seed) as generator:  # encoder and head weights are seeded too
        prompts = _soft_prompts(recipe, template, backbone, injector.width, collapsed, generator)
        head = _head(recipe, checked.verbalizer, backbone, template, classes)
    padding = recipe.padding_side
    if padding == "auto":
        padding = "left" if backbone.is_causal else "right"
    return PromptModel(
        backbone,
        template,
        prompts,
        injector,
        head,
        recipe.trainable,
        recipe.max_length,
        padding,
        recipe.inputs,
    )


def _injector(placement: str, layers: str, model: nn.Module) -> InputInjector:
    if placement == "input":
        return InputInjector(model)
    selected = select_layers(layers, n_layers(model))
    return (
        PrefixInjector(model, selected) if placement == "prefix" else DeepInjector(model, selected)
    )


def _soft_prompts(
    recipe: ModelConfig,
    template: Template,
    backbone: Backbone,
    width: int,
    collapsed: bool,
    generator: torch.Generator,
) -> SoftPrompts:
    """The prompt table (and encoder), initialised. Prefix rows hold keys and values: without
    an encoder they start normal(0, 1) as in P-tuning v2; with one (prefix tuning) the table
    is embedding-sized and initialised like input prompts, and the MLP widens it."""
    config = recipe.prompts
    prefix = config.placement == "prefix"
    projected = prefix and config.encoder == "mlp" and not collapsed
    prompts = SoftPrompts(
        template.n_slots,
        width,
        "none" if collapsed else config.encoder,
        config.encoder_hidden,
        config.dropout,
        table_dim=backbone.hidden_size if projected else None,
    )
    if prefix and not projected:
        prompts.table.data.normal_(generator=generator)
    else:
        embeddings = backbone.model.get_input_embeddings().weight
        prompts.initialise(template.slots, embeddings, backbone.tokenizer, config.init, generator)
    return prompts.to(backbone.model.dtype)


def _head(
    recipe: ModelConfig,
    verbalizer: Verbalizer | None,
    backbone: Backbone,
    template: Template,
    classes: Sequence[str] | None,
) -> nn.Module:
    config = recipe.head
    if verbalizer is not None:
        return VerbalizerHead(
            verbalizer,
            backbone.tokenizer,
            template.space_before_mask,
            config.multi_token,
            config.aggregate,
        )
    labels = list(config.classes or classes)
    if config.type == "token":
        return TokenClassifierHead(backbone.hidden_size, labels, config.dropout)
    return ClassifierHead(backbone.hidden_size, labels, config.pool, config.dropout)
