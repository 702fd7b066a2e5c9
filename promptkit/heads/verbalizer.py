"""Verbalizer head (cloze): label words scored from the LM's prediction at [MASK]."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from promptkit import catalog
from promptkit.backbone import first_answer_logits, reading_at
from promptkit.config import HeadConfig
from promptkit.encoding import mask_token
from promptkit.errors import ConfigError, TemplateError
from promptkit.heads.base import Head, Outputs
from promptkit.tasks import CLASSIFICATION
from promptkit.template import Template
from promptkit.verbalizer import Verbalizer, score_classes

if TYPE_CHECKING:
    from promptkit.backbone import Backbone

MultiToken = Literal["mean", "first"]
Aggregate = Literal["mean", "max"]


class LabelWordsConfig(HeadConfig):
    """A head section that names label words per class."""

    verbalizer: str | dict[str, list[str] | str] | None = Field(
        None, description="catalog name, YAML path or {class: [words]}"
    )

    def words(self) -> Verbalizer:
        """The label words the config names."""
        spec = self.verbalizer
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


class VerbalizerConfig(LabelWordsConfig):
    """``head`` of the verbalizer."""

    type: Literal["verbalizer"] = "verbalizer"
    multi_token: MultiToken = "mean"
    aggregate: Aggregate = "mean"


def check_mask(template: Template, head: str) -> None:
    """A head that reads its answer at [MASK] needs one in the template."""
    if not template.has_mask:
        raise TemplateError(
            f"{template.name} has no [MASK], but a {head} head reads its answer there: add "
            "[MASK] (e.g. '<x> It was [MASK].')."
        )


def answer_lead(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """What an encoder-decoder's decoder reads after its start token before the answer's
    first token: T5's sentinel when [MASK] stands for it (no mask token), else nothing."""
    sentinel = mask_token(tokenizer)
    return [sentinel] if tokenizer.mask_token_id is None and sentinel is not None else []


def mask_logits(
    model: PreTrainedModel,
    inputs: dict[str, object],
    batch: dict[str, torch.Tensor],
    lead: Sequence[int] = (),
) -> torch.Tensor:
    """The LM's logits ``[B, V]`` over the whole vocabulary where [MASK] is read: at the mask
    (a masked LM), at the token before it (a causal LM: ``batch["mask_positions"]`` is
    already that one), or the decoder's first answer token after ``lead`` (an
    encoder-decoder). ``inputs`` is the prompted backbone's forward (an injector's)."""
    if model.config.is_encoder_decoder:
        return first_answer_logits(model, inputs, lead)
    with reading_at(model, batch["mask_positions"].unsqueeze(-1)):
        return model(**inputs).logits[:, 0]


class VerbalizerHead(Head):
    """Scores the verbalizer's classes from the LM logits at the mask position (no parameters);
    on an encoder-decoder, from the decoder's prediction of the answer's first token (after
    T5's sentinel, when [MASK] stands for it).

    Args:
        verbalizer: the label words.
        tokenizer: the backbone's tokenizer.
        space_before: whether the template has a space before [MASK].
        multi_token, aggregate: see ``promptkit.verbalizer``.
    """

    type = "verbalizer"
    config = VerbalizerConfig
    task = CLASSIFICATION
    reads_logits = True

    def __init__(
        self,
        verbalizer: Verbalizer,
        tokenizer: PreTrainedTokenizerBase,
        space_before: bool,
        multi_token: MultiToken = "mean",
        aggregate: Aggregate = "mean",
    ) -> None:
        super().__init__()
        self.classes = verbalizer.classes
        self.multi_token, self.aggregate = multi_token, aggregate
        ids, mask = verbalizer.token_ids(tokenizer, space_before)
        self.lead = answer_lead(tokenizer)
        self.register_buffer("word_ids", ids, persistent=False)
        self.register_buffer("word_mask", mask, persistent=False)

    @classmethod
    def check(cls, config: VerbalizerConfig, template: Template) -> list[str]:
        """The template must have [MASK]; the label words bring the classes."""
        check_mask(template, "verbalizer")
        return config.words().classes

    @classmethod
    def build(
        cls,
        config: VerbalizerConfig,
        backbone: Backbone,
        template: Template,
        classes: Sequence[str],
    ) -> VerbalizerHead:
        if not backbone.has_lm_head:
            raise ConfigError(
                f"{backbone.name} is loaded as an encoder without an LM head, which "
                "a verbalizer needs: use `head: {type: classifier}` or an LM backbone."
            )
        return cls(
            config.words(),
            backbone.tokenizer,
            template.space_before_mask,
            config.multi_token,
            config.aggregate,
        )

    def forward(
        self,
        model: PreTrainedModel,
        inputs: dict[str, object],
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Class logits ``[B, C]`` (an encoder-decoder's from its answer's first token)."""
        logits = mask_logits(model, inputs, batch, self.lead).unsqueeze(1)
        return self.read(Outputs(logits=logits), batch)

    def logit_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The [MASK] position of each example."""
        return batch["mask_positions"].unsqueeze(-1)

    def read(self, outputs: Outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class scores from the LM's prediction at [MASK]."""
        return score_classes(
            outputs.logits[:, 0].float().log_softmax(-1),
            self.word_ids,
            self.word_mask,
            self.multi_token,
            self.aggregate,
        )
