"""Batched inference over encoded examples, and its metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from accelerate.utils import gather_object
from rich.progress import track

from promptkit.policy import PolicyModule
from promptkit.processes import processes


@torch.inference_mode()
def predict_logits(
    model: PolicyModule,
    encoded: Sequence[Any],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Logits in the order of ``encoded``: ``[N, C]``, or ``[N, W, C]`` for sequence
    labelling (W the most words of any example, zero-padded). Examples are batched by
    length, so that little is spent on padding. Under ``accelerate launch`` each process
    scores its share and all of them get every row."""
    device = device or next(model.parameters()).device
    state = processes()
    mine = range(state.process_index, len(encoded), state.num_processes)
    was_training = model.training
    model.eval()
    order = sorted(mine, key=lambda i: len(encoded[i]))
    rows: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    starts = range(0, len(order), batch_size)
    for start in track(starts, description="scoring", disable=not progress, transient=True):
        chunk = order[start : start + batch_size]
        batch = model.collate([encoded[i] for i in chunk])
        logits = model({k: v.to(device) for k, v in batch.items()}).float().cpu()
        for row, index in enumerate(chunk):
            rows[index] = logits[row]
    model.train(was_training)
    if state.num_processes > 1:
        for index, row in gather_object([(i, rows[i]) for i in mine]):
            rows[index] = row
    width = max((r.shape[0] for r in rows if r.dim() == 2), default=0)
    return torch.stack(
        [r if r.dim() == 1 else torch.nn.functional.pad(r, (0, 0, 0, width - len(r))) for r in rows]
    )


def evaluate(
    model: PolicyModule,
    encoded: Sequence[Any],
    labels: Sequence[Any],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """The model's metrics (its task's) on encoded, labelled examples."""
    logits = predict_logits(model, encoded, batch_size, device, progress)
    return model.task.metrics(logits, labels, model.classes)
