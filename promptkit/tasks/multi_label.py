"""Multi-label classification: any number of classes per example, one sigmoid per class.

A label is a list of class names (``[]``: none of them). The head's class scores are trained
as independent logits (binary cross-entropy); after training each class gets the threshold
that gives the best F1 on the validation split, kept as an offset on its logit, so that an
answer's probability is at least 0.5 exactly when the class is predicted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from promptkit.tasks.base import Task

if TYPE_CHECKING:
    from promptkit.core.data import Split


class MultiLabel(Task):
    """Any number of classes per example: a 0/1 vector; micro- and macro-F1, exact match."""

    name = "multi_label"
    metric_names = ("micro_f1", "macro_f1", "exact_match")
    empty_label = True
    tunes_thresholds = True

    def class_counts(self, labels: Sequence[Any], classes: Sequence[str]) -> Counter:
        return Counter(c for label in labels for c, on in zip(classes, label, strict=True) if on)

    def scores_as_logits(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Each class's log-odds: whether its words are the answer or not, on its own."""
        log_probs = log_probs.clamp(max=-1e-6)
        return log_probs - torch.log(-torch.expm1(log_probs))

    def label_names(self, raw: Any) -> list[str]:
        return self.names_in_list(
            raw, "a multi-label example's label is a list of class names ([] for none)"
        )

    def encode_label(self, names: list[str], index: Mapping[str, int]) -> list[float]:
        chosen = [0.0] * len(index)
        for name in names:
            chosen[index[name]] = 1.0
        return chosen

    def holdout(self, split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
        """At random (label sets are not stratified)."""
        from sklearn.model_selection import train_test_split  # heavy: imported when needed

        keep, held = train_test_split(
            list(range(len(split))), test_size=fraction, random_state=seed
        )
        return split.subset(sorted(keep)), split.subset(sorted(held))

    def few_shot(self, split: Split, k: int, seed: int) -> Split:
        """Examples in a seeded order, each taken while one of its classes has fewer than k
        (examples without a class: k of them)."""
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).tolist()
        taken: dict[int, int] = {}
        chosen = []
        for i in order:
            classes = [c for c, on in enumerate(split.labels[i]) if on] or [-1]
            if any(taken.get(c, 0) < k for c in classes):
                chosen.append(i)
                for c in classes:
                    taken[c] = taken.get(c, 0) + 1
        return split.subset(sorted(chosen))

    def add_labels(self, batch: dict[str, torch.Tensor], labels: Sequence[list[float]]) -> None:
        batch["labels"] = torch.tensor([list(row) for row in labels], dtype=torch.float)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of each class's logit."""
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """One sigmoid per class."""
        return logits.float().sigmoid()

    def chosen(self, probabilities: Mapping[str, float]) -> list[str]:
        """The classes at or above 0.5 (their tuned thresholds)."""
        return [name for name, p in probabilities.items() if p >= 0.5]

    def metrics(
        self, logits: torch.Tensor, labels: Sequence[list[float]], classes: Sequence[str]
    ) -> dict[str, float]:
        """Micro- and macro-F1 over the classes, and the share of exact label sets."""
        from sklearn.metrics import f1_score  # heavy: imported when needed

        true = torch.tensor([list(row) for row in labels]).bool()
        guess = logits.float() >= 0
        return {
            "micro_f1": float(f1_score(true, guess, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(true, guess, average="macro", zero_division=0)),
            "exact_match": float((true == guess).all(-1).float().mean()),
        }

    def named(
        self, probabilities: torch.Tensor, classes: Sequence[str], sizes: Sequence[int]
    ) -> list[dict[str, float]]:
        return [dict(zip(classes, row, strict=True)) for row in probabilities.tolist()]


def best_thresholds(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each class's logit threshold ``[C]`` with the best F1 on ``logits [N, C]`` against
    0/1 ``labels``: the midpoint between two neighbouring scores (ties to the lower
    threshold, i.e. more recall); 0 for a class the data never shows."""
    thresholds = torch.zeros(logits.shape[1])
    for c in range(logits.shape[1]):
        scores, truth = logits[:, c].float(), labels[:, c].bool()
        if not truth.any():
            continue
        ordered = scores.sort().values
        candidates = torch.cat([ordered[:1] - 1, (ordered[1:] + ordered[:-1]) / 2])
        guesses = scores[None, :] >= candidates[:, None]  # [K, N]
        hits = (guesses & truth).sum(-1).float()
        f1 = 2 * hits / (guesses.sum(-1) + truth.sum()).float()
        thresholds[c] = candidates[int(f1.argmax())]
    return thresholds
