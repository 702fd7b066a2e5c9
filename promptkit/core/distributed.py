"""A run over several processes: this process's place among them (one, or several under
``accelerate launch``)."""

from __future__ import annotations

import torch
from accelerate import PartialState


def processes() -> PartialState:
    """This process's place among the run's processes (on the CPU when no GPU is there, so
    `accelerate launch --multi_gpu` on a CPU machine runs one process per rank over gloo)."""
    return PartialState(cpu=not torch.cuda.is_available())
