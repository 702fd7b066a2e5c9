"""Generation head: the answer is text, written by the LM after the prompt (decoder-only) or
by the decoder (encoder-decoder), through transformers' ``generate()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, model_validator
from transformers import PreTrainedModel

from promptkit.backbone.loading import answer_logits
from promptkit.core.config import HeadConfig, validate
from promptkit.errors import ConfigError, TemplateError
from promptkit.tasks import GENERATION
from promptkit.text.heads.base import Head
from promptkit.text.template import SegmentKind, Template

if TYPE_CHECKING:
    from promptkit.backbone.loading import Backbone


class GenerationConfig(HeadConfig):
    """``head`` of a generator: where the answer comes from, and how it is decoded."""

    type: Literal["generation"] = "generation"
    target: str | None = Field(
        None,
        description="the answer, as Jinja over the example's fields (default: the value of "
        "data.label_column)",
    )
    max_new_tokens: int = Field(64, gt=0, description="the longest answer, in tokens")
    num_beams: int = Field(1, ge=1, description="beam search with more than one")
    do_sample: bool = Field(False, description="sample the answer (else greedy or beam search)")
    temperature: float | None = Field(None, gt=0, description="sampling only")
    top_p: float | None = Field(None, gt=0, le=1, description="sampling only")
    top_k: int | None = Field(None, gt=0, description="sampling only")
    repetition_penalty: float | None = Field(
        None, gt=0, description="above 1 discourages repeated tokens"
    )
    no_repeat_ngram_size: int | None = Field(
        None, gt=0, description="no n-gram of this size twice in an answer"
    )
    stop: list[str] = Field(default_factory=list, description="strings that end the answer")

    @model_validator(mode="after")
    def _consistent(self) -> GenerationConfig:
        sampling = [k for k in ("temperature", "top_p", "top_k") if getattr(self, k) is not None]
        if sampling and not self.do_sample:
            raise ValueError(
                f"{', '.join(sampling)} shape sampling, but do_sample is false (greedy or beam "
                "search): set do_sample: true, or drop them"
            )
        if any(not s for s in self.stop):
            raise ValueError("a stop string is empty: it would end every answer at once")
        return self

    def decoding(self) -> dict[str, Any]:
        """The ``generate()`` options this config sets (the stop strings are applied apart,
        see ``promptkit.text.decoding``)."""
        return self.model_dump(exclude={*_NOT_DECODING, "stop"}, exclude_none=True)


# GenerationConfig's keys that say what the answer is, not how it is decoded.
_NOT_DECODING = ("type", "target")
DECODING_OPTIONS = tuple(k for k in GenerationConfig.model_fields if k not in _NOT_DECODING)


class GenerationHead(Head):
    """Learns the answer's tokens by teacher forcing (the loss covers the answer and its end
    token only); ``PromptModel.generate`` writes answers.

    Args:
        config: the head's config (its decoding options).
    """

    type = "generation"
    config = GenerationConfig
    task = GENERATION

    def __init__(self, config: GenerationConfig) -> None:
        super().__init__()
        self.classes: list[str] = []
        self.decoding_config = config.model_dump()

    def decoding(self, overrides: Mapping[str, Any] | None = None) -> GenerationConfig:
        """The head's decoding options, with ``overrides`` (``num_beams=4``, ...) checked and
        put in their place."""
        unknown = sorted(set(overrides or {}) - set(DECODING_OPTIONS))
        if unknown:
            raise ConfigError(
                f"{', '.join(map(repr, unknown))}: not a decoding option; the decoding options "
                f"are {', '.join(DECODING_OPTIONS)}."
            )
        return validate(GenerationConfig, {**self.decoding_config, **(overrides or {})}, "decoding")

    @classmethod
    def check(cls, config: GenerationConfig, template: Template) -> list[str]:
        """[MASK], if the template has it, marks where the answer starts: nothing after it."""
        pieces = [
            s for s in template.segments() if s.kind is not SegmentKind.TEXT or s.text.strip()
        ]
        if template.has_mask and pieces[-1].kind is not SegmentKind.MASK:
            raise TemplateError(
                f"{template.name}: for a text answer, [MASK] marks where the answer starts, so "
                "it must end the template (or leave it out: the answer then follows the "
                "template's end)."
            )
        if config.target is not None:
            Template(config.target, "head.target")  # a syntax error shows now
        return []

    @classmethod
    def build(
        cls,
        config: GenerationConfig,
        backbone: Backbone,
        template: Template,
        classes: Sequence[str],
    ) -> GenerationHead:
        if backbone.kind not in ("causal_lm", "seq2seq_lm"):
            raise ConfigError(
                f"{backbone.name} is a {backbone.kind}, which cannot write text: a text answer "
                "needs a causal LM or an encoder-decoder (`backbone.kind: causal_lm` or "
                "`seq2seq_lm`)."
            )
        if backbone.is_encoder_decoder and template.has_mask:
            raise TemplateError(
                f"{template.name}: with an encoder-decoder the template goes to the encoder and "
                "the answer comes from the decoder: drop [MASK]."
            )
        return cls(config)

    def forward(
        self,
        model: PreTrainedModel,
        inputs: dict[str, object],
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Logits ``[N, V]`` of the answer tokens of a batch (one row per target token)."""
        return answer_logits(model, inputs, batch["labels"])
