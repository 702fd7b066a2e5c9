"""The vision modality: images on vision transformers (VPT)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptkit.core.modality import Modality, Prepared

if TYPE_CHECKING:
    from pydantic import BaseModel


class VisionModality(Modality):
    """Image runs (``modality: vision``); timm and torchvision load only for these."""

    name = "vision"
    presets = "vision"

    def run_schema(self) -> type[BaseModel]:
        from promptkit.vision.config import VisionRunConfig

        return VisionRunConfig

    def recipe_schema(self) -> type[BaseModel]:
        from promptkit.vision.config import VisionModelConfig

        return VisionModelConfig

    def load_data(self, config: Any) -> tuple[Any, list[str]]:
        from promptkit.vision.data import load_image_splits

        return load_image_splits(config.data, config.seed)

    def prepare(self, config: Any, backbone: Any = None) -> Prepared:
        from promptkit.vision.model import build_vision_model

        splits, classes = self.load_data(config)
        model = build_vision_model(config.recipe(), classes)
        return Prepared(model, splits, model.fingerprint())

    def build(self, recipe: Any, classes: Sequence[str], backbone: Any = None) -> Any:
        from promptkit.vision.model import build_vision_model

        return build_vision_model(recipe, classes)

    def read_inputs(self, spec: str) -> list[dict[str, Any]]:
        """An image file, a folder of them (searched recursively), or a data file."""
        from promptkit.core.readers import read_rows
        from promptkit.vision.data import IMAGE_SUFFIXES

        path = Path(spec)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            return [{"image": str(f)} for f in files]
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [{"image": str(path)}]
        return read_rows(spec)

    def read_labelled(self, data: Any, spec: str) -> tuple[list[dict[str, Any]], str]:
        from promptkit.vision.data import read_image_rows

        return read_image_rows(data, spec), "label"
