"""What every head shares: turning one backbone forward into answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from promptkit.backbone import encoder_states, reading_at
from promptkit.config import HeadConfig
from promptkit.encoding import EncodedPrompt
from promptkit.tasks import MULTI_LABEL, Task
from promptkit.template import Template

if TYPE_CHECKING:
    from promptkit.backbone import Backbone
    from promptkit.model import PromptModel


@dataclass
class Outputs:
    """What a backbone forward gives a head: the last hidden states over the input
    (``[B, L, D]``), and the LM head's logits at the positions the head reads (``[B, K, V]``).
    """

    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class Head(nn.Module):
    """Base of the heads: one subclass per head type, registered in ``promptkit.heads``.

    A subclass declares its ``config`` section and its ``task``, checks a recipe before any
    model loads (``check``), builds itself from its config (``build``), and reads its answers
    from a forward's ``Outputs`` (``read``): hidden states, or, when ``reads_logits``, the LM
    head's logits at ``logit_positions``. Reading apart from running lets several heads share
    one forward (``promptkit.host``).
    """

    type: ClassVar[str]
    config: ClassVar[type[HeadConfig]]
    task: ClassVar[Task]
    reads_logits: ClassVar[bool] = False
    classes: list[str]

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
        if not self.reads_logits:
            return self.read(Outputs(hidden=encoder_states(model, inputs)), batch)
        with reading_at(model, self.logit_positions(batch)):
            return self.read(Outputs(logits=model(**inputs).logits), batch)
