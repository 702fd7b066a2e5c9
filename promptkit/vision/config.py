"""The vision modality's config schema: the recipe of a prompted vision transformer and a
whole training run on images."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from promptkit.backbone.layers import check_layers
from promptkit.core.config import (
    DataConfig,
    Group,
    Strict,
    TrainerConfig,
    absolute_if_local,
    recipe_of,
)


class VisionBackboneConfig(Strict):
    """A vision transformer: a timm model name, or a transformers ViT or DINOv2 folder / hub
    id."""

    name: str = Field(
        description="timm name (vit_*, deit_*) or transformers ViT / DINOv2 folder or hub id"
    )
    source: Literal["auto", "timm", "transformers"] = Field(
        "auto", description="auto: transformers if name is a folder with config.json"
    )
    pretrained: bool = Field(False, description="timm: load the published weights")
    checkpoint: str | None = Field(None, description="timm: a local weights file to load")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="timm.create_model kwargs")

    _absolute_paths = field_validator("name", "checkpoint")(absolute_if_local)


class VPTConfig(Strict):
    """Visual Prompt Tuning: how many prompt tokens, and where."""

    tokens: int = Field(10, ge=0, le=1024, description="prompt tokens per prompted layer")
    deep: bool = Field(False, description="VPT-deep: each selected layer has its own prompts")
    layers: str = Field("all", description="deep only: all | first:K | last:K | A-B")
    dropout: float = Field(0.1, ge=0, lt=1, description="on the prompt tokens, in training")

    _layers = field_validator("layers")(check_layers)

    @model_validator(mode="after")
    def _layers_need_deep(self) -> VPTConfig:
        if self.layers != "all" and not self.deep:
            raise ValueError("layers selects the blocks of VPT-deep: set deep: true")
        return self


class VisionHeadConfig(Strict):
    """The linear head on the class token, the mean of the patch tokens, or both side by side
    (token+avg: DINOv2's linear evaluation; transformers backbones)."""

    pool: Literal["token", "avg", "token+avg"] = Field(
        "token", description="the class token, the mean of the patches, or both"
    )


class ImageConfig(Strict):
    """How images are fitted to the backbone's input; unset keys keep the backbone's own."""

    size: int | None = Field(
        None,
        ge=8,
        le=4096,
        description="input side in pixels (a backbone that resizes its position grid: "
        "transformers ViT, DINOv2; best a multiple of the patch size)",
    )
    fit: Literal["crop", "letterbox", "squash"] | None = Field(
        None,
        description="crop: shorter side, then centre crop; letterbox: whole image, padded "
        "with the mean colour; squash: stretched to a square",
    )


class VisionModelConfig(Strict):
    """The recipe of a prompted vision transformer."""

    modality: Literal["vision"]
    backbone: VisionBackboneConfig = Field(description="the frozen vision transformer")
    vpt: VPTConfig = Field(default_factory=VPTConfig, description="the prompt tokens")
    head: VisionHeadConfig = Field(
        default_factory=VisionHeadConfig, description="the linear head on the pooled state"
    )
    image: ImageConfig = Field(
        default_factory=ImageConfig, description="how images become model inputs"
    )
    trainable: list[Group] = Field(
        default_factory=lambda: ["prompts", "head"], description="what trains"
    )
    seed: int = Field(
        13, ge=0, lt=2**32, description="seeds the prompts' and head's start and the data order"
    )

    @field_validator("trainable")
    @classmethod
    def _head_trains(cls, value: list[str]) -> list[str]:
        if "head" not in value:
            raise ValueError("the head is new (one output per class), so it must train: add head")
        return list(dict.fromkeys(value))


class ImageDataConfig(DataConfig):
    """Images: a folder per class, Fashion-MNIST's IDX files, scikit-learn's digits, or a
    data set with an image column."""

    source: Literal["image_folder", "fashion_mnist", "digits", "dataset"] = Field(
        "image_folder", description="where the images come from"
    )
    path: str | None = Field(None, description="fashion_mnist: the folder of the IDX files")
    image_column: str = Field("image", description="dataset: the column of the images")
    classes: list[str] | None = Field(None, description="keep only these labels, in this order")


class VisionRunConfig(VisionModelConfig):
    """A whole training run on images."""

    data: ImageDataConfig = Field(description="the images")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="how it trains")
    output_dir: str = Field("runs/run", description="the run folder (fit --output overrides)")

    def recipe(self) -> VisionModelConfig:
        """The part of the config that is saved with the trained prompt."""
        return recipe_of(self, VisionModelConfig)
