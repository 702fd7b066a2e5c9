"""Contextual calibration (Zhao et al. 2021): a prompt's bias toward some classes, estimated
from inputs that carry no content ("N/A", "", "[MASK]" as plain text) or from unlabelled
inputs, and divided out of the class probabilities.

With ``p_cf`` the mean class probabilities over those inputs, a prediction's probabilities
``p`` become ``p / p_cf``, renormalised: the content-free inputs then score every class alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field, model_validator

from promptkit.core.config import Strict
from promptkit.errors import ConfigError

if TYPE_CHECKING:
    from promptkit.text.model import PromptModel

CONTENT_FREE = ["N/A", "", "[MASK]"]


class CalibrationConfig(Strict):
    """``calibration``: where the label bias is estimated from."""

    content_free: list[str] | None = Field(
        None,
        description='inputs with no content, put in every input slot (default "N/A", "" and '
        '"[MASK]", as plain text)',
    )
    unlabelled: int | None = Field(
        None, gt=0, description="estimate from this many training inputs instead (labels unused)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> CalibrationConfig:
        if self.content_free is not None and self.unlabelled is not None:
            raise ValueError("give content_free or unlabelled, not both")
        if self.content_free is not None and not self.content_free:
            raise ValueError("content_free is empty: give at least one input, e.g. ['N/A']")
        return self


def calibration_examples(
    model: PromptModel,
    content_free: Sequence[str] | None = None,
    examples: Sequence[Mapping[str, Any]] | None = None,
) -> Sequence[Mapping[str, Any]]:
    """The examples the bias is estimated from: ``examples``, or the content-free inputs
    (by default "N/A", "" and "[MASK]"); giving both, or none of either, is an error."""
    if examples is None:
        return content_free_examples(model, content_free)
    if content_free is not None:
        raise ConfigError("calibrate takes content-free inputs or examples, not both.")
    if not examples:
        raise ConfigError("calibrate was given no examples: give at least one.")
    return examples


def content_free_examples(
    model: PromptModel, inputs: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One example per content-free input, in every input slot of the template."""
    inputs = CONTENT_FREE if inputs is None else inputs
    if isinstance(inputs, str) or not all(isinstance(text, str) for text in inputs):
        raise ConfigError(
            f"content-free inputs are a list of texts, such as ['N/A'], not {inputs!r}."
        )
    if not inputs:
        raise ConfigError("the content-free inputs are empty: give at least one, e.g. ['N/A'].")
    slots = model.template.inputs
    return [{slot: text for slot in slots} for text in inputs]


def estimate(
    model: PromptModel, examples: Sequence[Mapping[str, Any]], batch_size: int = 32
) -> torch.Tensor:
    """The log of the mean class probabilities over ``examples`` (bound examples), with no
    calibration in place."""
    from promptkit.core.inference import predict_logits

    if not model.task.one_class:
        raise ConfigError(
            f"calibration corrects the class probabilities of a classifier; this run's task "
            f"is {model.task.name}: drop the calibration section."
        )
    saved, model.calibration = model.calibration, None
    try:
        logits = predict_logits(model, model.encode(examples), batch_size)
    finally:
        model.calibration = saved
    return logits.softmax(-1).mean(0).log()


def calibrated(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Class logits with the bias divided out of their probabilities."""
    return logits.float().log_softmax(-1) - bias.to(logits.device)
