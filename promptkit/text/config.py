"""The text modality's config schema: the recipe of a prompt model (saved with it) and a
whole training run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from promptkit.backbone.dispatch import loading_options
from promptkit.backbone.loading import Backbone, load_backbone
from promptkit.backbone.quantization import QuantizationConfigs
from promptkit.core.config import (
    DataConfig,
    Group,
    Strict,
    TrainerConfig,
    absolute_if_local,
    recipe_of,
)
from promptkit.errors import ConfigError
from promptkit.text.calibration import CalibrationConfig
from promptkit.text.demonstrations import DemonstrationsConfig
from promptkit.text.heads import HeadConfigs
from promptkit.text.heads.verbalizer import VerbalizerConfig
from promptkit.text.joint_ensemble import JointEnsembleConfig
from promptkit.text.placements import PlacementConfigs
from promptkit.text.placements.input import InputConfig


class BackboneConfig(Strict):
    """Which pretrained model to prompt."""

    name: str = Field(description="hub id or local folder")
    kind: Literal["auto", "masked_lm", "causal_lm", "encoder"] = Field(
        "auto",
        description="auto reads it from the checkpoint; encoder uses the hidden states alone",
    )
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = Field(
        "float32", description="float64 for exact comparisons; bfloat16 or float16 halve the memory"
    )
    compile: bool = Field(
        False,
        description="torch.compile each layer of the backbone (the first steps compile it: "
        "worth it only for long runs where it is measured to pay)",
    )
    quantization: QuantizationConfigs | None = Field(
        None,
        description="quantize the frozen weights while loading (bitsandbytes or torchao); a "
        "checkpoint quantized already needs none",
    )
    device_map: str | dict[str, int | str] | None = Field(
        None,
        description="spread the frozen weights over devices, CPU memory and disk (accelerate): "
        "auto, balanced, sequential, or module name -> GPU index, cpu or disk",
    )
    max_memory: dict[int | str, int | str] | None = Field(
        None, description='under a device map, the most each device holds: {0: 20GiB, cpu: "60GiB"}'
    )
    offload_folder: str | None = Field(
        None, description="under a device map, where weights offloaded to disk are written"
    )

    _absolute_name = field_validator("name")(absolute_if_local)

    @field_validator("offload_folder")
    @classmethod
    def _absolute_folder(cls, value: str | None) -> str | None:
        return None if value is None else str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _dispatch(self) -> BackboneConfig:
        try:
            self.dispatch()
        except ConfigError as err:
            raise ValueError(str(err)) from None
        if self.compile and self.device_map is not None:
            raise ValueError(
                "backbone.compile does not apply to a backbone spread by backbone.device_map "
                "(its layers run through accelerate's hooks): drop one of them."
            )
        return self

    def dispatch(self) -> dict[str, object]:
        """The device-map options to load with (none when the model loads whole)."""
        return loading_options(self.device_map, self.max_memory, self.offload_folder)

    def load(self, name: str | None = None) -> Backbone:
        """The backbone this section describes (or ``name``, loaded the same way)."""
        return load_backbone(
            name or self.name, self.kind, self.dtype, self.quantization, **self.dispatch()
        )


class ModelConfig(Strict):
    """The recipe of a prompt model: everything needed to rebuild it around its backbone."""

    modality: Literal["text"] = "text"
    backbone: BackboneConfig = Field(description="the frozen pretrained model")
    template: str = Field(description="a template or a catalog template's name")
    inputs: dict[str, str] = Field(default_factory=dict, description="input slot -> data column")
    head: HeadConfigs = Field(
        default_factory=VerbalizerConfig, description="what turns a forward into answers (type)"
    )
    prompts: PlacementConfigs = Field(
        default_factory=InputConfig, description="where the soft slots go (placement)"
    )
    trainable: list[Group] = Field(
        default_factory=lambda: ["prompts"], description="what trains; [] for zero-shot use"
    )
    max_length: int | None = Field(
        None,
        gt=0,
        description="longest encoded sequence; default 256, or fewer if the "
        "backbone has fewer positions",
    )
    padding_side: Literal["auto", "left", "right"] = Field(
        "auto", description="auto: left for causal LMs (their answer is read last), else right"
    )
    seed: int = Field(
        13, ge=0, lt=2**32, description="seeds the prompts' and head's start, data order, sampling"
    )
    calibration: CalibrationConfig | None = Field(
        None, description="contextual calibration of the class probabilities, after training"
    )
    demonstrations: DemonstrationsConfig | None = Field(
        None, description="labelled training examples put before each query (LM-BFF)"
    )
    ensemble: JointEnsembleConfig | None = Field(
        None, description="several prompts for the task, trained together as one model"
    )

    @field_validator("trainable")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class RunConfig(ModelConfig):
    """A whole training run on text."""

    data: DataConfig = Field(description="the examples")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="how it trains")
    output_dir: str = Field("runs/run", description="the run folder (fit --output overrides)")

    def recipe(self) -> ModelConfig:
        """The part of the config that is saved with the trained prompt."""
        return recipe_of(self, ModelConfig)
