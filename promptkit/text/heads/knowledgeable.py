"""Knowledgeable verbalizer (KPT, Hu et al. 2022): many label words per class, from a word
list, refined and calibrated by the model's own prior over them.

Before training (and for a zero-shot run, instead of it), the head reads the LM's prediction
at [MASK] on unlabelled training inputs: the mean probability of every label word there is
its contextual prior ``P_D(v)``. Then:

1. refinement: a word whose prior is below ``refine`` times the median prior of its class's
   words is dropped (the model finds it improbable in this template, so its probability is
   noise); every class keeps at least its likeliest word;
2. calibration: each word's probability is divided by its prior, so frequent words do not
   win by frequency alone;
3. aggregation: a class scores the weighted mean of its words' calibrated probabilities; the
   weights (one per word, equal at the start) train with the ``head`` group (KPT's learnable
   refinement).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from promptkit.core.seeding import seeded
from promptkit.errors import DataWarning, VerbalizerError
from promptkit.text.encoding import word_tokens
from promptkit.text.heads.base import Outputs
from promptkit.text.heads.verbalizer import (
    MultiToken,
    VerbalizerConfig,
    VerbalizerHead,
    needs_lm_head,
    vocabulary_log_probs,
)
from promptkit.text.label_words import Verbalizer, word_scores

if TYPE_CHECKING:
    from promptkit.backbone.loading import Backbone
    from promptkit.text.model import PromptModel
    from promptkit.text.template import Template


class KnowledgeableConfig(VerbalizerConfig):
    """``head`` of the knowledgeable verbalizer."""

    type: Literal["knowledgeable"] = "knowledgeable"  # type: ignore[assignment]
    multi_token: Literal["mean", "first"] = Field(  # type: ignore[assignment]
        "mean", description="a word of several tokens: mean of their scores, or first"
    )
    aggregate: Literal["mean"] = "mean"
    prior: int = Field(
        200, gt=0, description="unlabelled training inputs the words' prior is estimated on"
    )
    refine: float = Field(
        0.5,
        ge=0,
        description="drop a word whose prior is below this share of its class's median "
        "(0 keeps all)",
    )
    calibrate: bool = Field(True, description="divide each word's probability by its prior")


class KnowledgeableVerbalizerHead(VerbalizerHead):
    """Class scores from many label words, refined and calibrated by their prior.

    Args:
        verbalizer: the label words (many per class).
        tokenizer: the backbone's tokenizer.
        space_before: whether the template has a space before [MASK].
        multi_token: how a word's pieces score (see ``promptkit.text.label_words``).
        settings: the head's config (prior, refine, calibrate).
    """

    type = "knowledgeable"
    config = KnowledgeableConfig

    def __init__(
        self,
        verbalizer: Verbalizer,
        tokenizer: PreTrainedTokenizerBase,
        space_before: bool,
        multi_token: MultiToken,
        settings: KnowledgeableConfig,
    ) -> None:
        super().__init__(verbalizer, tokenizer, space_before, multi_token)
        self.settings = settings
        self.words = verbalizer.words
        has_word = self.word_mask[..., 0]
        self.register_buffer("log_prior", torch.zeros(has_word.shape))
        self.register_buffer("kept", has_word.clone())
        self.weights = nn.Parameter(torch.zeros(has_word.shape))

    @classmethod
    def build(
        cls,
        config: KnowledgeableConfig,
        backbone: Backbone,
        template: Template,
        classes: Sequence[str],
    ) -> KnowledgeableVerbalizerHead:
        needs_lm_head(backbone)
        space = template.space_before_mask
        words = usable_words(config.words(), backbone.tokenizer, space)
        return cls(words, backbone.tokenizer, space, config.multi_token, config)

    def prepare(self, model: PromptModel, examples: Sequence[Mapping[str, Any]]) -> None:
        """Estimate the words' prior on up to ``prior`` of ``examples`` (chosen with the
        model's seed), then refine the words by it."""
        with seeded(model.seed) as generator:
            order = torch.randperm(len(examples), generator=generator)
        chosen = [examples[i] for i in order[: self.settings.prior].tolist()]
        self.log_prior.copy_(self.estimate_prior(model, chosen))
        self.kept.copy_(refined(self.log_prior, self.word_mask[..., 0], self.settings.refine))

    def estimate_prior(
        self, model: PromptModel, examples: Sequence[Mapping[str, Any]]
    ) -> torch.Tensor:
        """Each word's log prior ``[C, W]``: its log-probability at [MASK] under the mean
        prediction over ``examples``."""
        pieces = self.word_ids.unique()
        log_probs = vocabulary_log_probs(model, examples, pieces, progress=True)
        mean = torch.full((1, int(pieces.max()) + 1), -math.inf, device=pieces.device)
        mean[0, pieces] = (log_probs.logsumexp(0) - math.log(len(examples))).to(pieces.device)
        prior = word_scores(mean, self.word_ids, self.word_mask, self.multi_token)[0]
        return prior.masked_fill(~self.word_mask[..., 0], 0.0)

    def kept_words(self) -> dict[str, list[str]]:
        """The label words left after refinement, per class."""
        return {
            label: [w for w, keep in zip(words, self.kept[c].tolist(), strict=False) if keep]
            for c, (label, words) in enumerate(self.words.items())
        }

    def read(self, outputs: Outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class scores: the weighted mean of the kept words' (calibrated) probabilities."""
        log_probs = outputs.logits[:, 0].float().log_softmax(-1)
        words = word_scores(log_probs, self.word_ids, self.word_mask, self.multi_token)
        if self.settings.calibrate:
            words = words - self.log_prior
        weights = self.weights.masked_fill(~self.kept, -math.inf).log_softmax(-1)
        return (words + weights).masked_fill(~self.kept, -math.inf).logsumexp(-1)


def usable_words(
    verbalizer: Verbalizer, tokenizer: PreTrainedTokenizerBase, space: bool
) -> Verbalizer:
    """The words the tokenizer can represent: a long word list has some that it cannot, which
    are left out with a warning that counts them; a class left without words is an error."""
    kept = {
        label: [w for w in words if word_tokens(tokenizer, w, space) is not None]
        for label, words in verbalizer.words.items()
    }
    dropped = [
        w for label, words in verbalizer.words.items() for w in words if w not in kept[label]
    ]
    empty = [label for label, words in kept.items() if not words]
    if empty:
        raise VerbalizerError(
            f"no label word of class(es) {empty} can be tokenised by this backbone's tokenizer "
            "(they map to unknown): give them words it knows."
        )
    if dropped:
        total = sum(len(words) for words in verbalizer.words.values())
        warnings.warn(
            f"left out {len(dropped)} of {total} label words the tokenizer cannot represent: "
            f"{', '.join(dropped[:10])}{' ...' if len(dropped) > 10 else ''}",
            DataWarning,
            stacklevel=2,
        )
    return Verbalizer(kept)


def refined(log_prior: torch.Tensor, has_word: torch.Tensor, share: float) -> torch.Tensor:
    """Which words stay ``[C, W]``: a prior at least ``share`` times its class's median, and
    always the class's likeliest word."""
    prior = log_prior.masked_fill(~has_word, math.nan)
    median = prior.nanmedian(-1, keepdim=True).values
    keep = has_word & (prior >= median + math.log(share)) if share > 0 else has_word.clone()
    best = log_prior.masked_fill(~has_word, -math.inf).argmax(-1, keepdim=True)
    return keep.scatter(-1, best, True)
