"""Tagging (sequence labelling): one tag per input word, e.g. BIO entity tags."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from promptkit.errors import DataError
from promptkit.tasks.base import IGNORED, Task

if TYPE_CHECKING:
    from promptkit.core.data import Split


class Tagging(Task):
    """One answer per input word: a list of tag indices; entity-level F1 (seqeval)."""

    name = "tagging"
    metric_names = ("f1", "precision", "recall", "accuracy")

    def class_counts(self, labels: Sequence[Any], classes: Sequence[str]) -> Counter:
        """How often each tag labels a word."""
        return Counter(classes[i] for label in labels for i in label if i != IGNORED)

    def class_order(self, names: Sequence[str]) -> list[str]:
        """Tag names in a stable order, the outside tag "O" first (words the model cannot see,
        cut by max_length, are predicted as the first class)."""
        return sorted(set(names), key=lambda n: (n != "O", n))

    def label_names(self, raw: Any) -> list[str]:
        what = (
            "a tagger's label is a list of tags, one per word (give a list, or read a CoNLL file)"
        )
        return self.names_in_list(raw, what)

    def encode_label(self, names: list[str], index: Mapping[str, int]) -> list[int]:
        return [index[n] for n in names]

    def check(self, split: Split, slots: Sequence[str], source: str) -> None:
        """Each example's words and tags line up: its inputs are lists of words, as many as
        its tags."""
        for number, (example, tags) in enumerate(zip(split.examples, split.labels, strict=True)):
            texts = [s for s in slots if not isinstance(example[s], list | tuple)]
            if texts:
                raise DataError(
                    f"{source}: row {number + 1}: a tagger reads words, but input <{texts[0]}> "
                    "holds a text: give a list of words (e.g. a CoNLL file's tokens)."
                )
            words = sum(len(example[s]) for s in slots)
            if words != len(tags):
                raise DataError(
                    f"{source}: row {number + 1} has {words} words but {len(tags)} tags: each "
                    "word needs exactly one tag."
                )

    def holdout(self, split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
        """At random (tag sequences cannot be stratified)."""
        from sklearn.model_selection import train_test_split  # heavy: imported when needed

        keep, held = train_test_split(
            list(range(len(split))), test_size=fraction, random_state=seed
        )
        return split.subset(sorted(keep)), split.subset(sorted(held))

    def few_shot(self, split: Split, k: int, seed: int) -> Split:
        """k sentences, drawn at random (seeded)."""
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
        return split.subset(sorted(order[:k].tolist()))

    def from_text(self, text: str) -> list[str]:
        """A plain string is split into words at whitespace."""
        return text.split()

    def add_labels(self, batch: dict[str, torch.Tensor], labels: Sequence[list[int]]) -> None:
        """Tags padded to the batch's words with ``IGNORED``, which also marks words that have
        no token (cut by max_length)."""
        starts = batch["word_starts"]
        width = max(starts.shape[1], max(len(tags) for tags in labels))
        if width > starts.shape[1]:
            starts = torch.nn.functional.pad(starts, (0, width - starts.shape[1]), value=-1)
            batch["word_starts"] = starts
        out = torch.full(starts.shape, IGNORED, dtype=torch.long)
        for row, tags in enumerate(labels):
            out[row, : len(tags)] = torch.tensor(tags, dtype=torch.long)
        batch["labels"] = out.masked_fill(starts < 0, IGNORED)

    def metrics(
        self, logits: torch.Tensor, labels: Sequence[list[int]], classes: Sequence[str]
    ) -> dict[str, float]:
        """Entity-level precision, recall and F1 (seqeval, BIO tags) and word accuracy."""
        from seqeval import metrics as seqeval  # heavy (scikit-learn): imported when needed

        predicted = logits.argmax(-1).tolist()
        true = [[classes[t] for t in tags] for tags in labels]
        guess = [  # a word cut by max_length has no prediction: it counts as the first tag
            [classes[t] for t in (row + [0] * len(tags))[: len(tags)]]
            for row, tags in zip(predicted, labels, strict=True)
        ]
        return {
            "precision": float(seqeval.precision_score(true, guess, zero_division=0)),
            "recall": float(seqeval.recall_score(true, guess, zero_division=0)),
            "f1": float(seqeval.f1_score(true, guess, zero_division=0)),
            "accuracy": float(seqeval.accuracy_score(true, guess)),
        }

    def named(
        self, probabilities: torch.Tensor, classes: Sequence[str], sizes: Sequence[int]
    ) -> list[list[dict[str, float]]]:
        """Per item, one dict per word (the batch's padding words dropped; a word cut by
        max_length, which the model never saw, gets even odds, so its tag is the first)."""
        even = [1 / len(classes)] * len(classes)
        return [
            [dict(zip(classes, word, strict=True)) for word in (row + [even] * n)[:n]]
            for row, n in zip(probabilities.tolist(), sizes, strict=True)
        ]
