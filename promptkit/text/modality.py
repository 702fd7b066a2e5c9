"""The text modality: templates over data rows, on transformers backbones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptkit.core.modality import Modality, Prepared
from promptkit.errors import BackboneMismatchError, ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel


class TextModality(Modality):
    """Text runs (the default)."""

    name = "text"
    presets = "methods"

    def run_schema(self) -> type[BaseModel]:
        from promptkit.text.config import RunConfig

        return RunConfig

    def recipe_schema(self) -> type[BaseModel]:
        from promptkit.text.config import ModelConfig

        return ModelConfig

    def saved_recipe(self, document: dict[str, Any]) -> Any:
        """Format 1 kept every head and placement key in one flat section, whatever the
        type: the keys the type does not have are dropped."""
        from promptkit.text.heads import HEADS
        from promptkit.text.placements import PLACEMENTS

        recipe = dict(document["recipe"])
        if document.get("format", 1) < 2:
            head = recipe.get("head", {})
            known = HEADS[head.get("type", "verbalizer")].config.model_fields
            recipe["head"] = {k: v for k, v in head.items() if k in known}
            prompts = recipe.get("prompts", {})
            known = PLACEMENTS[prompts.get("placement", "input")].config.model_fields
            recipe["prompts"] = {k: v for k, v in prompts.items() if k in known}
        return self.recipe_schema().model_validate(recipe)

    def load_data(self, config: Any) -> tuple[Any, list[str]]:
        from promptkit.text.model import check_recipe

        return _data(config, check_recipe(config.recipe()))

    def prepare(self, config: Any, backbone: Any = None) -> Prepared:
        from promptkit.text.model import build_model, check_recipe

        checked = check_recipe(config.recipe())  # before any model is loaded
        splits, classes = _data(config, checked)
        demonstrations = _demonstrations(config, checked.template, splits.train, classes)
        _no_float16_on_cpu(config.backbone.dtype)
        backbone = _the_configs(config.backbone, _backbone(config.backbone, backbone))
        fingerprint = backbone.fingerprint()
        model = build_model(checked, classes, backbone)
        model.demonstrations = demonstrations
        model.prepare(splits.train.examples)
        return Prepared(model, splits, fingerprint)

    def build(self, recipe: Any, classes: Sequence[str], backbone: Any = None) -> Any:
        from promptkit.text.model import build_model

        return build_model(recipe, classes, _backbone(recipe.backbone, backbone), collapsed=True)

    def read_inputs(self, spec: str) -> list[dict[str, Any]]:
        from promptkit.core.readers import read_rows

        return read_rows(spec)

    def read_labelled(self, data: Any, spec: str) -> tuple[list[dict[str, Any]], str]:
        from promptkit.core.readers import read_rows

        return read_rows(spec), data.label_column


def _data(config: Any, checked: Any) -> tuple[Any, list[str]]:
    """The splits and classes of a config whose recipe is ``checked``; every example is
    rendered, so that a template error shows before any model loads."""
    from promptkit.text.data import load_splits
    from promptkit.text.template import Template

    _label_hidden(checked.template, config.inputs, config.data.label_column)
    target = getattr(config.head, "target", None)
    splits, classes = load_splits(
        config.data,
        checked.task,
        checked.classes,
        config.inputs,
        checked.template.inputs,
        config.seed,
        Template(target, "head.target") if target else None,
    )
    for split in (splits.train, splits.validation, splits.test):
        for example in split.examples if split else ():
            checked.template.render(example)
    return splits, classes


def _demonstrations(config: Any, template: Any, train: Any, classes: Sequence[str]) -> Any:
    """The training pool of the config's demonstrations (None without any)."""
    from promptkit.text.demonstrations import Demonstrations

    if config.demonstrations is None:
        return None
    return Demonstrations.of_split(config.recipe(), template, train, classes)


def _no_float16_on_cpu(dtype: str) -> None:
    """float16 trains on a GPU only: on the CPU its sums overflow or are not supported."""
    import torch

    if dtype == "float16" and not torch.cuda.is_available():
        raise ConfigError(
            "backbone.dtype float16 trains on a GPU only, and there is none here: use float32, "
            "or bfloat16 to halve the memory."
        )


def _label_hidden(template: Any, inputs: Any, label_column: str) -> None:
    """The template must not read the label column: the answer would be in the input."""
    read = {inputs.get(slot, slot) for slot in template.inputs} | template.jinja_fields
    if label_column in read:
        raise ConfigError(
            f"{template.name} reads the label column {label_column!r} (through an input slot "
            "or Jinja), so the answer would be in the input: read other columns only."
        )


def _backbone(section: Any, given: Any) -> Any:
    """The backbone given (loaded, or a folder or hub id to load as ``section`` says), else
    the one ``section`` names."""
    from promptkit.backbone.loading import Backbone

    if isinstance(given, Backbone):
        return given
    if given is not None and not isinstance(given, str | Path):
        raise ConfigError(
            "backbone= takes a loaded backbone (promptkit.load_backbone) or a model's "
            f"folder or hub id, not a {type(given).__name__}."
        )
    return section.load(str(given) if given else None)


def _the_configs(section: Any, backbone: Any) -> Any:
    """``backbone``, checked to be the one ``section`` names (the run records that name):
    by its name, else by fingerprint."""
    from promptkit.core.config import absolute_if_local

    wanted = section.quantization.method if section.quantization else None
    if wanted is not None and backbone.quantization != wanted:
        raise BackboneMismatchError(
            f"the backbone given is quantized with {backbone.quantization or 'nothing'}, but "
            f"backbone.quantization asks for {wanted}: pass a backbone loaded with it, or "
            "drop backbone.quantization."
        )
    if absolute_if_local(backbone.name) == section.name:
        return backbone
    named = section.load()
    if named.fingerprint() != backbone.fingerprint():
        raise BackboneMismatchError(
            f"the backbone given ({backbone.name}) is not the one backbone.name names "
            f"({section.name}), and the run would record that name: pass the backbone the "
            f"config names, or set backbone.name to {backbone.name}."
        )
    return backbone
