"""Configuration: YAML validated by pydantic; unknown keys are errors that suggest the fix.

This module holds what every modality shares: the building blocks of a schema (strict
sections, unions of sections told apart by a key), the base sections, the trainer and data
sections, the literals they use, and validating a section with errors that name the fix. Each
modality registers its own recipe and run schema (``promptkit.modalities``); each placement
and head its own section (``promptkit.text.placements``, ``promptkit.text.heads``); a whole
run config is read in ``promptkit.runs.config``.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from promptkit.backbone.layers import check_layers
from promptkit.errors import ConfigError


class Strict(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def absolute_if_local(value: str | None) -> str | None:
    """A local path as an absolute one, so a saved run loads from anywhere; else unchanged."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def tagged_union(members: Sequence[type[BaseModel]], key: str, default: str) -> Any:
    """A pydantic union of config sections told apart by ``key`` (``default`` when absent).

    Each member declares ``key`` as a ``Literal`` of its one tag."""

    def tag_of(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get(key, default)
        return getattr(value, key, None)

    tagged = tuple(Annotated[m, Tag(tag(m, key))] for m in members)
    return Annotated[Union[tagged], Discriminator(tag_of)]  # noqa: UP007 (a runtime tuple)


def tag(member: type[BaseModel], key: str) -> str:
    """The tag a member of a tagged union answers to."""
    return member.model_fields[key].default


Group = Literal["prompts", "head", "bias", "norm", "all"]
Steps = Annotated[int, Field(gt=0, lt=2**31)]  # counts the loops slice by (islice, ranges)
InitKind = Literal["random", "vocab"]
EncoderKind = Literal["none", "mlp", "lstm"]
DEFAULT_LR: dict[str, float] = {
    "prompts": 1e-2,
    "head": 1e-3,
    "bias": 1e-3,
    "norm": 1e-3,
    "all": 2e-5,
}
# Keys that say which member of a tagged section is meant; a preset's section is replaced,
# not merged, when the config names another member.
_TAG_KEYS = ("placement", "type")


class PromptsConfig(Strict):
    """Where the soft slots go and how their vectors are parameterised. Each placement
    extends it with its own keys (``promptkit.text.placements``)."""

    @model_validator(mode="after")
    def _hidden_needs_an_encoder(self) -> PromptsConfig:
        if self.encoder_hidden is not None and self.encoder == "none":
            raise ValueError("encoder_hidden sizes a prompt encoder: set encoder (mlp, lstm)")
        return self

    placement: str
    init: InitKind = Field("vocab", description="default init of slots that name none")
    encoder: EncoderKind = Field("none", description="none | mlp | lstm (P-tuning v1)")
    encoder_hidden: int | None = Field(
        None, gt=0, le=65536, description="the width of the encoder's hidden layer (mlp, lstm)"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="on the vectors (prefix dropout)")


class LayeredPromptsConfig(PromptsConfig):
    """Prompts that selected layers get vectors of their own."""

    layers: str = Field("all", description="all | first:K | last:K | A-B")

    _layers = field_validator("layers")(check_layers)


def distinct_classes(classes: list[str] | None) -> list[str] | None:
    """Classes given by name: at least two, none twice."""
    if classes is None:
        return None
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise ValueError(f"{twice} named more than once: each class once")
    if len(classes) < 2:
        raise ValueError("a classifier needs at least two classes")
    return classes


class HeadConfig(Strict):
    """What turns the backbone's output into answers. Each head extends it
    (``promptkit.text.heads``)."""

    type: str


class ClassesConfig(HeadConfig):
    """A head that scores classes."""

    multi_label: bool = Field(
        False,
        description="any number of classes per example (labels are lists): one sigmoid per "
        "class, thresholds tuned on the validation split",
    )


class TrainerConfig(Strict):
    """How training runs."""

    epochs: int = Field(10, ge=0, description="0: a zero-shot run (nothing trains)")
    batch_size: Steps = Field(16, description="examples per step (per process)")
    eval_batch_size: Steps = Field(64, description="examples per batch when scoring")
    grad_accum: Steps = Field(1, description="batches whose gradients make one step")
    lr: dict[Group, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="per trainable group"
    )
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False, description="AdamW's")
    warmup_ratio: float = Field(
        0.06, ge=0, lt=1, description="the share of the steps the learning rate warms up over"
    )
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="the learning rate after warm-up"
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, allow_inf_nan=False, description="clip gradients to this norm (null: never)"
    )
    patience: int | None = Field(None, gt=0, description="epochs without improvement")
    metric: str | None = Field(
        None, description="picks the best epoch; default: the task's first metric"
    )
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="fp16 needs a GPU (on the CPU it is not used)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, slower"
    )
    progress: bool = Field(True, description="show progress on the console (train.log has it)")
    log_every: Steps = Field(10, description="optimizer steps between train.log lines")

    def learning_rate(self, group: str) -> float:
        """The learning rate of one trainable group."""
        return self.lr.get(group, DEFAULT_LR[group])


class DataConfig(Strict):
    """Where the examples come from and how their columns and labels map."""

    dataset: str | None = Field(
        None, description="a hub data set; train/validation/test then name its splits"
    )
    subset: str | None = Field(None, description="the hub data set's configuration")
    train: str | None = Field(None, description="a data file or folder, or a hub split")
    validation: str | None = Field(
        None, description="as train; default: validation_size of the training data"
    )
    test: str | None = Field(None, description="as train; scored once, after training")
    label_column: str = Field("label", description="the column that holds the label")
    label_map: dict[str, str] | None = Field(None, description="raw label -> class name")
    validation_size: float = Field(
        0.1, gt=0, lt=1, description="the share of train held out when there is no validation"
    )
    few_shot: int | None = Field(None, gt=0, description="examples per class for training")
    validation_few_shot: int | None = Field(
        None, gt=0, description="examples per class for validation"
    )
    invalid: Literal["error", "drop"] = Field(
        "error", description="a row with an empty input or label: an error, or left out"
    )


def recipe_of(config: BaseModel, schema: type[BaseModel]) -> Any:
    """The fields of ``config`` that ``schema`` (a recipe) has, validated as one."""
    return schema.model_validate(config.model_dump(include=set(schema.model_fields)))


def validate(schema: type[BaseModel], data: Any, source: str) -> Any:
    """``data`` validated by ``schema``; a failure is a ConfigError naming every bad key."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        details = "\n".join(f"  - {_describe(e, schema)}" for e in _one_per_key(err.errors()))
        raise ConfigError(f"{source}: invalid config\n{details}") from None


def _one_per_key(errors: list[Any]) -> list[dict[str, Any]]:
    """The errors by key as the user wrote it: the members of a plain union (``str`` or
    ``dict[...]``) are not named, and what each expected is said in one line."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for error in errors:
        loc = error["loc"]
        if error["type"] not in ("extra_forbidden", "missing"):  # the key is the user's
            loc = loc[:1] + tuple(p for p in loc[1:] if not _member_label(p))
        if loc in by_key:
            expected = error["msg"].removeprefix("Input should be ")
            by_key[loc]["msg"] += f", or {expected}"
        else:
            by_key[loc] = {**error, "loc": loc}
    return list(by_key.values())


def _member_label(part: Any) -> bool:
    """Whether a location part names a member of a plain union (a type, not a key)."""
    return isinstance(part, str) and ("[" in part or part in _TYPE_LABELS)


_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "none"}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, sections merged key by key (a section that names
    another placement or head type replaces the base's)."""
    out = dict(base)
    for key, value in override.items():
        both_sections = isinstance(value, dict) and isinstance(out.get(key), dict)
        if both_sections and not _other_member(out[key], value):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def _other_member(base: dict[str, Any], override: dict[str, Any]) -> bool:
    return any(k in base and k in override and base[k] != override[k] for k in _TAG_KEYS)


def _describe(error: dict[str, Any], schema: type[BaseModel]) -> str:
    loc = _without_tags(error["loc"], schema)
    where = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        parent = _model_at(schema, error["loc"][:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown key{hint}; known keys here: {', '.join(known)}"
    if error["type"] == "missing":
        return f"{where}: required, but missing"
    if error["type"] == "union_tag_not_found":
        return _untagged(where, error, schema)
    if error["type"] == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        return f"{where}: unknown {error['ctx']['tag']!r}; choose one of {expected}"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def _untagged(where: str, error: dict[str, Any], schema: type[BaseModel]) -> str:
    """A tagged section given as something else than a mapping with its tag."""
    parent = _model_at(schema, error["loc"][:-1])
    field = parent.model_fields.get(str(error["loc"][-1])) if parent else None
    members = _members(field.annotation) if field else {}
    key = next((k for k in _TAG_KEYS if all(k in m.model_fields for m in members.values())), "")
    tags = ", ".join(repr(t) for t in members)
    return (
        f"{where}: write a section (a mapping of keys, its {key} one of {tags}), not "
        f"{error.get('input')!r}"
    )


def _without_tags(loc: tuple, schema: type[BaseModel]) -> tuple:
    """The error location as the user wrote it: union member tags dropped."""
    out, model = [], schema
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        out.append(part)
        field = model.model_fields.get(str(part)) if model else None
        members = _members(field.annotation) if field else {}
        if members and parts and parts[0] in members:
            model = members[parts.pop(0)]
        else:
            model = _as_model(field.annotation) if field else None
    return tuple(out)


def _model_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = schema
    parts = list(loc)
    while parts and model is not None:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return None
        members = _members(field.annotation)
        model = members.get(parts.pop(0)) if members and parts else _as_model(field.annotation)
    return model


def _members(annotation: Any) -> dict[str, type[BaseModel]]:
    """The members of a tagged union annotation, by tag (empty for anything else)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    out = {}
    for arg in typing.get_args(annotation):
        tags = [m.tag for m in getattr(arg, "__metadata__", ()) if isinstance(m, Tag)]
        if tags:
            out[tags[0]] = typing.get_args(arg)[0]
    return out


def _as_model(annotation: Any) -> type[BaseModel] | None:
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )
