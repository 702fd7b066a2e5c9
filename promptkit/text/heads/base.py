"""What every head shares: turning one backbone forward into answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from promptkit.backbone.loading import encoder_states, first_answer_logits, reading_at
from promptkit.core.config import HeadConfig
from promptkit.tasks import MULTI_LABEL, Task
from promptkit.text.encoding import EncodedPrompt
from promptkit.text.template import Template

if TYPE_CHECKING:
    from promptkit.backbone.loading import Backbone
    from promptkit.text.model import PromptModel


@dataclass
class Outputs:
    """What a backbone forward gives a head: the last hidden states over the input
    (``[B, L, D]``), and the LM head's logits at the positions the head reads (``[B, K, V]``).
    """

    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class Reading:
    """What heads read of one forward: the LM head's logits at ``positions`` (``[B, K]``;
    None: no logits), an encoder-decoder's from its decoder's first answer token after
    ``lead``, and the last hidden states over the input when ``hidden``."""

    positions: torch.Tensor | None = None
    lead: Sequence[int] = ()
    hidden: bool = False


def run_forward(model: PreTrainedModel, inputs: dict[str, object], reading: Reading) -> Outputs:
    """One forward of the prompted backbone (``inputs``: a placement's), with what ``reading``
    asks: the LM head runs at the positions read only, and not at all when none is."""
    if reading.positions is None:
        return Outputs(hidden=encoder_states(model, inputs))
    if model.config.is_encoder_decoder:
        hidden = encoder_states(model, inputs) if reading.hidden else None
        if hidden is not None:
            inputs = {**inputs, "encoder_outputs": (hidden,)}
        logits = first_answer_logits(model, inputs, reading.lead)
        return Outputs(hidden=hidden, logits=logits.unsqueeze(1))
    kept: list[torch.Tensor] = []
    with reading_at(model, reading.positions, kept if reading.hidden else None):
        logits = model(**inputs).logits
    return Outputs(hidden=kept[0] if kept else None, logits=logits)


class Head(nn.Module):
    """Base of the heads: one subclass per head type, registered in ``promptkit.text.heads``.

    A subclass declares its ``config`` section and its ``task``, checks a recipe before any
    model loads (``check``), builds itself from its config (``build``), and reads its answers
    from a forward's ``Outputs`` (``read``): hidden states, or, when ``reads_logits``, the LM
    head's logits at ``logit_positions``. Reading apart from running lets several heads share
    one forward (``promptkit.serving.host``).
    """

    type: ClassVar[str]
    config: ClassVar[type[HeadConfig]]
    task: ClassVar[Task]
    reads_logits: ClassVar[bool] = False
    classes: list[str]
    # what an encoder-decoder's decoder reads before the answer's first token (T5's sentinel)
    lead: Sequence[int] = ()

    @classmethod
    def task_of(cls, config: HeadConfig) -> Task:
        """What the head answers with this config: its task, or several classes per example
        where the config says ``multi_label: true``."""
        return MULTI_LABEL if getattr(config, "multi_label", False) else cls.task

    @classmethod
    def check(cls, config: HeadConfig, template: Template) -> list[str] | None:
        """Check the head against the template; return the classes its config fixes (None:
        they come from the data)."""
        return getattr(config, "classes", None)

    @classmethod
    def build(
        cls,
        config: HeadConfig,
        backbone: Backbone,
        template: Template,
        classes: Sequence[str],
    ) -> Head:
        """The head for a backbone, with ``classes`` in logit order."""
        raise NotImplementedError

    @property
    def expands(self) -> bool:
        """Whether the head runs each example as several rows (``expand``)."""
        return False

    def expand(self, encoded: Sequence[EncodedPrompt]) -> Sequence[EncodedPrompt]:
        """The rows a batch of examples is run as (each example once, for most heads)."""
        return encoded

    def prepare(self, model: PromptModel, examples: Sequence[Mapping[str, Any]]) -> None:
        """Estimate what the head learns from unlabelled training inputs before training
        (nothing, for most heads)."""

    def logit_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Where the head reads the LM head's logits: ``[B, K]`` positions."""
        raise NotImplementedError

    def read_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``[B, K]`` positions: the only ones whose last hidden states the head reads
        (None: it may read any)."""
        return self.logit_positions(batch) if self.reads_logits else None

    def reading(self, batch: dict[str, torch.Tensor]) -> Reading:
        """What the head reads of a forward over ``batch``."""
        if not self.reads_logits:
            return Reading(hidden=True)
        return Reading(self.logit_positions(batch), self.lead)

    def read(self, outputs: Outputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's logits from a forward's outputs."""
        raise NotImplementedError

    def forward(
        self,
        model: PreTrainedModel,
        inputs: dict[str, object],
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Logits of a batch: ``model(**inputs)`` is the prompted backbone's forward; the LM
        head runs only at the positions read, and not at all for a head of hidden states."""
        return self.read(run_forward(model, inputs, self.reading(batch)), batch)
