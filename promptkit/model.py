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
from promptkit.heads import ClassifierHead, VerbalizerHead
from promptkit.injection import InputInjector
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
        head: a ``VerbalizerHead`` or ``ClassifierHead``.
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
        self.injector = InputInjector(backbone.model)
        self.tokenizer = PromptTokenizer(
            template, backbone.tokenizer, max_length, backbone.is_causal
        )
        self.groups = parameter_groups(prompts, head, backbone.model, trainable)

    @property
    def classes(self) -> list[str]:
        """Label names, in logit order."""
        return self.head.classes

    def examples(self, items: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Bind user inputs: a string fills the template's only input slot; a mapping is a data
        row (columns mapped to slots as in training)."""
        slots = self.template.inputs
        rows = []
        for item in items:
            if isinstance(item, str):
                if len(slots) != 1:
                    raise ConfigError(
                        f"the template has inputs {list(slots)}: pass mappings, not strings."
                    )
                item = {self.inputs.get(slots[0], slots[0]): item}
            rows.append(dict(item))
        return as_examples(rows, self.inputs, slots)

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
        """Class logits ``[B, C]`` for a collated batch."""
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
    with seeded(recipe.seed) as generator:  # encoder and head weights are seeded too
        prompts = SoftPrompts(
            template.n_slots,
            backbone.hidden_size,
            "none" if collapsed else recipe.prompts.encoder,
            recipe.prompts.encoder_hidden,
            recipe.prompts.dropout,
        )
        prompts.initialise(
            template.slots,
            backbone.model.get_input_embeddings().weight,
            backbone.tokenizer,
            recipe.prompts.init,
            generator,
        )
        prompts.to(backbone.model.dtype)
        if checked.verbalizer is not None:
            head: nn.Module = VerbalizerHead(
                checked.verbalizer,
                backbone.tokenizer,
                template.space_before_mask,
                recipe.head.multi_token,
                recipe.head.aggregate,
            )
        else:
            head = ClassifierHead(
                backbone.hidden_size,
                list(recipe.head.classes or classes),
                recipe.head.pool,
                recipe.head.dropout,
            )
    padding = recipe.padding_side
    if padding == "auto":
        padding = "left" if backbone.is_causal else "right"
    return PromptModel(
        backbone,
        template,
        prompts,
        head,
        recipe.trainable,
        recipe.max_length,
        padding,
        recipe.inputs,
    )
