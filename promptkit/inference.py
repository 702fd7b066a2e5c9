"""Batched inference and metrics over encoded examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import track

from promptkit.data import Label
from promptkit.policy import PolicyModule


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
    length, so that little is spent on padding."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    rows: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    starts = range(0, len(order), batch_size)
    for start in track(starts, description="scoring", disable=not progress, transient=True):
        chunk = order[start : start + batch_size]
        batch = model.collate([encoded[i] for i in chunk])
        logits = model({k: v.to(device) for k, v in batch.items()}).float().cpu()
        for row, index in enumerate(chunk):
            rows[index] = logits[row]
    model.train(was_training)
    width = max((r.shape[0] for r in rows if r.dim() == 2), default=0)
    return torch.stack(
        [r if r.dim() == 1 else torch.nn.functional.pad(r, (0, 0, 0, width - len(r))) for r in rows]
    )


def metrics(
    logits: torch.Tensor, labels: Sequence[Label], classes: Sequence[str]
) -> dict[str, float]:
    """Classification metrics, or entity-level ones where the labels are tag sequences."""
    if labels and isinstance(labels[0], list):
        return tagging_metrics(logits, labels, classes)
    return classification_metrics(logits, labels)


def default_metric(labels: Sequence[Label]) -> str:
    """The metric that picks the best epoch unless the config names one."""
    return "f1" if labels and isinstance(labels[0], list) else "accuracy"


def classification_metrics(logits: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro-F1 of argmax predictions."""
    from sklearn.metrics import accuracy_score, f1_score  # heavy: imported when first needed

    predictions = logits.argmax(-1).tolist()
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def tagging_metrics(
    logits: torch.Tensor, labels: Sequence[list[int]], classes: Sequence[str]
) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, BIO tags) and word accuracy."""
    from seqeval import metrics as seqeval  # heavy (scikit-learn): imported when first needed

    predicted = logits.argmax(-1).tolist()
    true = [[classes[t] for t in tags] for tags in labels]
    guess = [
        [classes[t] for t in row[: len(tags)]] for row, tags in zip(predicted, labels, strict=True)
    ]
    return {
        "precision": float(seqeval.precision_score(true, guess, zero_division=0)),
        "recall": float(seqeval.recall_score(true, guess, zero_division=0)),
        "f1": float(seqeval.f1_score(true, guess, zero_division=0)),
        "accuracy": float(seqeval.accuracy_score(true, guess)),
    }
