"""Run configuration: a YAML file validated by pydantic. Unknown keys are errors.

A ``ModelConfig`` is the recipe of a trained prompt (saved with it); a ``RunConfig`` adds the
data, the trainer settings and where the run goes.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptkit import catalog
from promptkit.errors import ConfigError
from promptkit.heads import Pool
from promptkit.prompts import EncoderKind, InitKind
from promptkit.verbalizer import Aggregate, MultiToken

Group = Literal["prompts", "head", "bias", "all"]
DEFAULT_LR: dict[str, float] = {"prompts": 1e-2, "head": 1e-3, "bias": 1e-3, "all": 2e-5}


def _absolute_if_local(value: str | None) -> str | None:
    """A local path as an absolute one, so a saved run loads from anywhere; else unchanged."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def _recipe_of(config: BaseModel, schema: type[BaseModel]) -> Any:
    """The fields of ``config`` that ``schema`` (a recipe) has, validated as one."""
    return schema.model_validate(config.model_dump(include=set(schema.model_fields)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneConfig(_Strict):
    """Which pretrained model to prompt."""

    name: str = Field(description="hub id or local folder")
    kind: Literal["auto", "masked_lm", "causal_lm", "encoder"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    _absolute_name = field_validator("name")(_absolute_if_local)


class PromptsConfig(_Strict):
    """Where the soft slots go, and how they are initialised and parameterised."""

    placement: Literal["input", "prefix", "deep"] = Field(
        "input",
        description="input: input embeddings (prompt tuning, P-tuning v1); prefix: keys and "
        "values of every selected layer, no positions (prefix tuning, P-tuning v2); deep: "
        "input positions whose hidden states each selected layer replaces",
    )
    layers: str = Field("all", description="prefix / deep: all | first:K | last:K | A-B")
    init: InitKind = Field("vocab", description="default init of slots that name none")
    encoder: EncoderKind = Field(
        "none", description="none | mlp (prefix: prefix tuning's reparameterisation) | lstm"
    )
    encoder_hidden: int | None = None
    dropout: float = Field(0.0, ge=0, lt=1, description="on the vectors (prefix dropout)")


class HeadConfig(_Strict):
    """What turns the backbone's output into labels."""

    type: Literal["verbalizer", "classifier", "token"] = Field(
        "verbalizer", description="verbalizer (cloze) | classifier | token (sequence labelling)"
    )
    verbalizer: str | dict[str, list[str] | str] | None = Field(
        None, description="catalog name, YAML path or {class: [words]}"
    )
    multi_token: MultiToken = "mean"
    aggregate: Aggregate = "mean"
    pool: Pool = "cls"
    classes: list[str] | None = Field(
        None, description="classifier labels or tags (default: from data)"
    )
    dropout: float = 0.1


class ModelConfig(_Strict):
    """The recipe of a prompt model: everything needed to rebuild it around its backbone."""

    modality: Literal["text"] = "text"
    backbone: BackboneConfig
    template: str = Field(description="a template or a catalog template's name")
    inputs: dict[str, str] = Field(default_factory=dict, description="input slot -> data column")
    head: HeadConfig = Field(default_factory=HeadConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    trainable: list[Group] = Field(
        default_factory=lambda: ["prompts"], description="what trains; [] for zero-shot use"
    )
    max_length: int = 256
    padding_side: Literal["auto", "left", "right"] = "auto"
    seed: int = 13

    @field_validator("trainable")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class DataConfig(_Strict):
    """Where the examples come from and how their columns and labels map."""

    dataset: str | None = Field(
        None, description="a hub data set; train/validation/test then name its splits"
    )
    subset: str | None = None
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    label_column: str = "label"
    label_map: dict[str, str] | None = Field(None, description="raw label -> class name")
    validation_size: float = Field(0.1, gt=0, lt=1)
    few_shot: int | None = Field(None, gt=0, description="examples per class for training")
    validation_few_shot: int | None = Field(None, gt=0)


class TrainerConfig(_Strict):
    """How training runs."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(16, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: dict[Group, float] = Field(default_factory=dict, description="per trainable group")
    weight_decay: float = 0.01
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    patience: int | None = Field(None, gt=0, description="epochs without improvement")
    metric: Literal["accuracy", "macro_f1", "f1", "precision", "recall"] | None = Field(
        None, description="picks the best epoch; default accuracy, entity f1 for tagging"
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    progress: bool = True

    def learning_rate(self, group: str) -> float:
        """The learning rate of one trainable group."""
        return self.lr.get(group, DEFAULT_LR[group])


class RunConfig(ModelConfig):
    """A whole training run."""

    data: DataConfig
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output_dir: str = "runs/run"

    def recipe(self) -> ModelConfig:
        """The part of the config that is saved with the trained prompt."""
        return _recipe_of(self, ModelConfig)


class VisionBackboneConfig(_Strict):
    """A vision transformer: a timm model name or a transformers ViT folder / hub id."""

    name: str = Field(description="timm name (vit_*, deit_*) or transformers folder / hub id")
    source: Literal["auto", "timm", "transformers"] = Field(
        "auto", description="auto: transformers if name is a folder with config.json"
    )
    pretrained: bool = Field(False, description="timm: load the published weights")
    checkpoint: str | None = Field(None, description="timm: a local weights file to load")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="timm.create_model kwargs")

    _absolute_paths = field_validator("name", "checkpoint")(_absolute_if_local)


class VPTConfig(_Strict):
    """Visual Prompt Tuning: how many prompt tokens, and where."""

    tokens: int = Field(10, ge=0, description="prompt tokens per prompted layer")
    deep: bool = Field(False, description="VPT-deep: each selected layer has its own prompts")
    layers: str = Field("all", description="deep only: all | first:K | last:K | A-B")
    dropout: float = Field(0.1, ge=0, lt=1)


class VisionHeadConfig(_Strict):
    """The linear head on the class token or on the mean of the patch tokens."""

    pool: Literal["token", "avg"] = "token"


class VisionModelConfig(_Strict):
    """The recipe of a prompted vision transformer."""

    modality: Literal["vision"]
    backbone: VisionBackboneConfig
    vpt: VPTConfig = Field(default_factory=VPTConfig)
    head: VisionHeadConfig = Field(default_factory=VisionHeadConfig)
    trainable: list[Group] = Field(default_factory=lambda: ["prompts", "head"])
    seed: int = 13

    @field_validator("trainable")
    @classmethod
    def _head_trains(cls, value: list[str]) -> list[str]:
        if "head" not in value:
            raise ValueError("the head is new (one output per class), so it must train: add head")
        return list(dict.fromkeys(value))


class ImageDataConfig(DataConfig):
    """Images: a folder per class, Fashion-MNIST's IDX files, scikit-learn's digits, or a
    data set with an image column."""

    source: Literal["image_folder", "fashion_mnist", "digits", "dataset"] = "image_folder"
    path: str | None = Field(None, description="fashion_mnist: the folder of the IDX files")
    image_column: str = "image"
    classes: list[str] | None = Field(None, description="keep only these labels, in this order")


class VisionRunConfig(VisionModelConfig):
    """A whole training run on images."""

    data: ImageDataConfig
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output_dir: str = "runs/run"

    def recipe(self) -> VisionModelConfig:
        """The part of the config that is saved with the trained prompt."""
        return _recipe_of(self, VisionModelConfig)


def recipe_from_dict(data: dict[str, Any]) -> ModelConfig | VisionModelConfig:
    """A saved recipe, text or vision."""
    if data.get("modality") == "vision":
        return VisionModelConfig.model_validate(data)
    return ModelConfig.model_validate(data)


def load_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig | VisionRunConfig:
    """Read, override (``a.b=value``, value parsed as YAML) and validate a run config."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such config file") from err
    for item in overrides:
        _apply_override(data, item)
    return validate_config(data, str(path))


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig | VisionRunConfig:
    """Validate a config mapping; errors name each bad key and suggest the fix.

    ``preset: NAME`` starts from a method of the catalog (``promptkit methods``): the
    config's own keys win. ``modality: vision`` marks an image run.
    """
    schema = VisionRunConfig if data.get("modality") == "vision" else RunConfig
    if "preset" in data:
        data = dict(data)
        kind = "vision" if schema is VisionRunConfig else "methods"
        preset = catalog.entry(kind, str(data.pop("preset")))["config"]
        data = merged(preset, data)
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        details = "\n".join(f"  - {_describe(e, schema)}" for e in err.errors())
        raise ConfigError(f"{source}: invalid config\n{details}") from None


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, sections merged key by key."""
    out = dict(base)
    for key, value in override.items():
        both_sections = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both_sections else value
    return out


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. trainer.epochs=5")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(raw)


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = _model_at(schema, error["loc"][:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown key{hint}; known keys here: {', '.join(known)}"
    if error["type"] == "missing":
        return f"{where}: required, but missing"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
