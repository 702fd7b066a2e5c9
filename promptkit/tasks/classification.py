"""Classification: one class per example."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from promptkit.tasks.base import Task

if TYPE_CHECKING:
    from promptkit.core.data import Split


class Classification(Task):
    """One answer per example: a class index; accuracy and macro-F1."""

    name = "classification"
    metric_names = ("accuracy", "macro_f1")
    one_class = True

    def label_names(self, raw: Any) -> list[str]:
        return [str(raw)]

    def encode_label(self, names: list[str], index: Mapping[str, int]) -> int:
        return index[names[0]]

    def holdout(self, split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
        """Stratified: the held-out part keeps the label proportions."""
        from sklearn.model_selection import train_test_split  # heavy: imported when needed

        keep, held = train_test_split(
            list(range(len(split))), test_size=fraction, random_state=seed, stratify=split.labels
        )
        return split.subset(sorted(keep)), split.subset(sorted(held))

    def few_shot(self, split: Split, k: int, seed: int) -> Split:
        """k examples of each class (all of a class that has fewer), drawn in a seeded order."""
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).tolist()
        taken: dict[int, int] = {}
        chosen = []
        for i in order:
            label = split.labels[i]
            if taken.get(label, 0) < k:
                taken[label] = taken.get(label, 0) + 1
                chosen.append(i)
        return split.subset(sorted(chosen))

    def add_labels(self, batch: dict[str, torch.Tensor], labels: Sequence[int]) -> None:
        batch["labels"] = torch.tensor(list(labels), dtype=torch.long)

    def metrics(
        self, logits: torch.Tensor, labels: Sequence[int], classes: Sequence[str]
    ) -> dict[str, float]:
        """Accuracy and macro-F1 of argmax predictions."""
        from sklearn.metrics import accuracy_score, f1_score  # heavy: imported when needed

        predictions = logits.argmax(-1).tolist()
        return {
            "accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        }

    def named(
        self, probabilities: torch.Tensor, classes: Sequence[str], sizes: Sequence[int]
    ) -> list[dict[str, float]]:
        return [dict(zip(classes, row, strict=True)) for row in probabilities.tolist()]
