"""Task kinds, by name. A new kind is one module plus one line here."""

from __future__ import annotations

from promptkit.tasks.base import IGNORED, Task
from promptkit.tasks.classification import Classification
from promptkit.tasks.generation import Generation
from promptkit.tasks.tagging import Tagging

TASKS: dict[str, Task] = {task.name: task for task in (Classification(), Tagging(), Generation())}
CLASSIFICATION, TAGGING, GENERATION = (
    TASKS[n] for n in ("classification", "tagging", "generation")
)

__all__ = ["CLASSIFICATION", "GENERATION", "IGNORED", "TAGGING", "TASKS", "Task"]
