"""What every head shares: turning one backbone forward into answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from promptkit.config import HeadConfig
from promptkit.tasks import Task
from promptkit.template import Template

if TYPE_CHECKING:
    from promptkit.backbone import Backbone


class Head(nn.Module):
    """Base of the heads: one subclass per head type, registered in ``promptkit.heads``.

    A subclass declares its ``config`` section and its ``task``, checks a recipe before any
    model loads (``check``), and builds itself from its config (``build``).
    """

    type: ClassVar[str]
    config: ClassVar[type[HeadConfig]]
    task: ClassVar[Task]
    classes: list[str]

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

    def forward(
        self,
        model: PreTrainedModel,
        inputs: dict[str, object],
        batch: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Logits of a batch: ``model(**inputs)`` is the prompted backbone's forward."""
        raise NotImplementedError
