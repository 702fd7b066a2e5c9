"""Task kinds, by name. A new kind is one module plus one line here."""

from __future__ import annotations

from promptkit.core.registry import Registry
from promptkit.tasks.base import IGNORED, Task
from promptkit.tasks.classification import Classification
from promptkit.tasks.generation import Generation
from promptkit.tasks.multi_label import MultiLabel
from promptkit.tasks.tagging import Tagging

TASKS: Registry[Task] = Registry(
    "task kind", (Classification(), MultiLabel(), Tagging(), Generation())
)
CLASSIFICATION, MULTI_LABEL, TAGGING, GENERATION = (
    TASKS[n] for n in ("classification", "multi_label", "tagging", "generation")
)

__all__ = ["CLASSIFICATION", "GENERATION", "IGNORED", "MULTI_LABEL", "TAGGING", "TASKS", "Task"]
