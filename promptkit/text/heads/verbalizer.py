"""Verbalizer head (cloze): label words scored from the LM's prediction at [MASK]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from promptkit import catalog
from promptkit.backbone.loading import first_answer_logits, reading_at
from promptkit.core.config import ClassesConfig, absolute_if_local
from promptkit.core.progress import Report, track
from promptkit.errors import ConfigError, TemplateError
from promptkit.tasks import CLASSIFICATION
from promptkit.text.encoding import EncodedPrompt, mask_token
from promptkit.text.heads.base import Head, Outputs
from promptkit.text.heads.word_decoding import WordDecoder
from promptkit.text.label_words import Verbalizer, class_scores, word_scores
from promptkit.text.template import Template

if TYPE_CHECKING:
    from promptkit.backbone.loading import Backbone
    from promptkit.text.model import PromptModel

MultiToken = Literal["mean", "first", "decode"]
Aggregate = Literal["mean", "max"]


class LabelWordsConfig(ClassesConfig):
    """A head section that names label words per class."""

    verbalizer: str | dict[str, list[str] | str] | None = Field(
        None, description="catalog name, YAML path or {class: [words]}"
    )

    @field_validator("verbalizer")
    @classmethod
    def _absolute_file(cls, value: Any) -> Any:
        """A verbalizer file, like every path of a config, is read from the working
        directory; it is kept absolute, so that a saved run reads it from anywhere."""
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            return absolute_if_local(value)
        return value

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
    multi_token: MultiToken = Field(
        "mean", description="a word of several tokens: mean of their scores, first, or decode"
    )
    aggregate: Aggregate = Field("mean", description="a class of several words: mean or max")


def check_mask(template: Template, head: str) -> None:
    """A head that reads its answer at [MASK] needs one in the template."""
    if not template.has_mask:
        raise TemplateError(
            f"{template.name} has no [MASK], but a {head} head reads its answer there: add "
            "[MASK] (e.g. '<x> It was [MASK].')."
        )


def needs_lm_head(backbone: Backbone) -> None:
    """A head that reads label words needs the LM head's predictions."""
    if not backbone.has_lm_head:
        raise ConfigError(
            f"{backbone.name} is loaded as an encoder without an LM head, which "
            "a verbalizer needs: use `head: {type: classifier}` or an LM backbone."
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
    encoder-decoder). ``inputs`` is the prompted backbone's forward (a placement's)."""
    if model.config.is_encoder_decoder:
        return first_answer_logits(model, inputs, lead)
    with reading_at(model, batch["mask_positions"].unsqueeze(-1)):
        return model(**inputs).logits[:, 0]


@torch.inference_mode()
def vocabulary_log_probs(
    model: PromptModel,
    examples: Sequence[Mapping[str, Any]],
    ids: torch.Tensor,
    batch_size: int = 32,
    progress: bool | Report = False,
) -> torch.Tensor:
    """Each example's log-probabilities ``[N, len(ids)]`` of the tokens ``ids`` where [MASK]
    is read (normalised over the whole vocabulary); ``progress``: see
    ``promptkit.core.progress``."""
    device = model.device
    lead = answer_lead(model.backbone.tokenizer)
    encoded = model.encode(examples)
    was_training = model.training
    model.eval()
    rows = []
    for start in track(range(0, len(encoded), batch_size), "reading [MASK] predictions", progress):
        batch = model.collate(encoded[start : start + batch_size], expand=False)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = mask_logits(model.lm, model.placement(batch, model.prompts()), batch, lead)
        rows.append(logits.float().log_softmax(-1)[:, ids.to(device)].cpu())
    model.train(was_training)
    return torch.cat(rows)


class VerbalizerHead(Head):
    """Scores the verbalizer's classes from the LM logits at the mask position (no parameters);
    on an encoder-decoder, from the decoder's prediction of the answer's first token (after
    T5's sentinel, when [MASK] stands for it).

    Args:
        verbalizer: the label words.
        tokenizer: the backbone's tokenizer.
        space_before: whether the template has a space before [MASK].
        multi_token, aggregate: see ``promptkit.text.label_words``.
        causal: the backbone is a causal LM (how ``multi_token: decode`` reads words).
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
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.classes = verbalizer.classes
        self.multi_token, self.aggregate = multi_token, aggregate
        ids, mask = verbalizer.token_ids(tokenizer, space_before)
        self.lead = answer_lead(tokenizer)
        self.register_buffer("word_ids", ids, persistent=False)
        self.register_buffer("word_mask", mask, persistent=False)
        self.decoder = None
        if multi_token == "decode":
            self.decoder = WordDecoder(ids, mask, causal, tokenizer.mask_token_id)

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
        needs_lm_head(backbone)
        if config.multi_token == "decode" and backbone.is_encoder_decoder:
            raise ConfigError(
                "multi_token: decode reads label words token by token on causal and masked "
                f"LMs; {backbone.name} is an encoder-decoder: use multi_token mean or first."
            )
        return cls(
            config.words(),
            backbone.tokenizer,
            template.space_before_mask,
            config.multi_token,
            config.aggregate,
            backbone.is_causal,
        )

    @property
    def expands(self) -> bool:
        """Whether words are decoded token by token, in rows of their own."""
        return self.decoder is not None

    def expand(self, encoded: Sequence[EncodedPrompt]) -> Sequence[EncodedPrompt]:
        """One row per label word (per piece, on a masked LM) when decoding words."""
        return encoded if self.decoder is None else self.decoder.expand(encoded)

    def logit_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The [MASK] position of each example (of each word's pieces, when decoding)."""
        if self.decoder is not None:
            return self.decoder.positions(batch["mask_positions"])
        return batch["mask_positions"].unsqueeze(-1)

    def read(self, outputs: Outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class scores from the LM's prediction at [MASK]: log-probabilities, or, for
        multi-label, log-odds (each class's words at [MASK] or not)."""
        if self.decoder is not None:
            words = self.decoder.word_scores(outputs.logits, len(self.classes))
        else:
            log_probs = outputs.logits[:, 0].float().log_softmax(-1)
            words = word_scores(log_probs, self.word_ids, self.word_mask, self.multi_token)
        scores = class_scores(words, self.word_mask[..., 0], self.aggregate)
        return self.task.scores_as_logits(scores)
