"""The text modality: templates over data rows, on transformers backbones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from promptkit.modalities.base import Modality, Prepared

if TYPE_CHECKING:
    from pydantic import BaseModel


class TextModality(Modality):
    """Text runs (the default)."""

    name = "text"
    presets = "methods"

    def run_schema(self) -> type[BaseModel]:
        from promptkit.recipe import RunConfig

        return RunConfig

    def recipe_schema(self) -> type[BaseModel]:
        from promptkit.recipe import ModelConfig

        return ModelConfig

    def saved_recipe(self, document: dict[str, Any]) -> Any:
        """Format 1 kept every head and placement key in one flat section, whatever the
        type: the keys the type does not have are dropped."""
        from promptkit.heads import HEADS
        from promptkit.placements import PLACEMENTS

        recipe = dict(document["recipe"])
        if document.get("format", 1) < 2:
            head = recipe.get("head", {})
            known = HEADS[head.get("type", "verbalizer")].config.model_fields
            recipe["head"] = {k: v for k, v in head.items() if k in known}
            prompts = recipe.get("prompts", {})
            known = PLACEMENTS[prompts.get("placement", "input")].config.model_fields
            recipe["prompts"] = {k: v for k, v in prompts.items() if k in known}
        return self.recipe_schema().model_validate(recipe)

    def prepare(self, config: Any, backbone: Any = None) -> Prepared:
        from promptkit.backbone import load_backbone
        from promptkit.data import load_splits
        from promptkit.model import build_model, check_recipe
        from promptkit.template import Template

        checked = check_recipe(config.recipe())  # before any model is loaded
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
            for example in split.examples if split else ():  # render errors before loading
                checked.template.render(example)
        backbone = backbone or load_backbone(
            config.backbone.name, config.backbone.kind, config.backbone.dtype
        )
        fingerprint = backbone.fingerprint()
        return Prepared(build_model(checked, classes, backbone), splits, fingerprint)

    def build(self, recipe: Any, classes: Sequence[str], backbone: Any = None) -> Any:
        from promptkit.backbone import Backbone, load_backbone
        from promptkit.model import build_model

        if not isinstance(backbone, Backbone):
            backbone = load_backbone(
                backbone or recipe.backbone.name, recipe.backbone.kind, recipe.backbone.dtype
            )
        return build_model(recipe, classes, backbone, collapsed=True)

    def read_inputs(self, spec: str) -> list[dict[str, Any]]:
        from promptkit.readers import read_rows

        return read_rows(spec)

    def read_labelled(self, data: Any, spec: str) -> tuple[list[dict[str, Any]], str]:
        from promptkit.readers import read_rows

        return read_rows(spec), data.label_column
