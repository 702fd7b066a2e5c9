"""Batched inference and metrics over encoded examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import track
from sklearn.metrics import accuracy_score, f1_score

from promptkit.policy import PolicyModule


@torch.inference_mode()
def predict_logits(
    model: PolicyModule,
    encoded: Sequence[Any],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Class logits ``[N, C]`` in the order of ``encoded``. Examples are batched by length, so
    that little is spent on padding."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = torch.empty(len(encoded), len(model.classes))
    starts = range(0, len(order), batch_size)
    for start in track(starts, description="scoring", disable=not progress, transient=True):
        chunk = order[start : start + batch_size]
        batch = model.collate([encoded[i] for i in chunk])
        out[chunk] = model({k: v.to(device) for k, v in batch.items()}).float().cpu()
    model.train(was_training)
    return out


def classification_metrics(logits: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-F1 of argmax predictions."""
    predictions = logits.argmax(-1).tolist()
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }
