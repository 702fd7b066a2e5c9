"""A task kind: what one answer is, and everything that follows from it (labels, batching,
loss, metrics, what predictions look like). Heads declare their task; data, training,
inference and the run folder read it from there instead of guessing from label shapes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from promptkit.errors import DataError

if TYPE_CHECKING:
    from promptkit.core.data import Split
    from promptkit.core.trainable import TrainableModule

IGNORED = -100  # label of a position that has no loss (padding, words cut by max_length)


class Scorer(Protocol):
    """What a task asks of the model it evaluates (``promptkit.core.inference`` runs the model: a
    task only turns what it answers into metrics)."""

    model: TrainableModule

    def logits(self, encoded: Sequence[Any]) -> torch.Tensor:
        """The model's logits for encoded examples, in their order."""
        ...

    def loss(self, encoded: Sequence[Any]) -> float:
        """The mean loss per answer token of encoded examples with their answers."""
        ...

    def write(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        """The answer the model writes for each example."""
        ...


class Task:
    """Base of the task kinds. A subclass is one file plus a line in ``promptkit.tasks``."""

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]  # what ``metrics`` measures; the first picks epochs
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    has_classes: ClassVar[bool] = True  # whether answers are classes (else free text)
    empty_label: ClassVar[bool] = False  # whether an empty list is a label (no class)
    # whether an answer is one class out of all, a distribution over them: what calibration,
    # ensembles, AutoPrompt and label-word search work on
    one_class: ClassVar[bool] = False
    tunes_thresholds: ClassVar[bool] = False  # whether classes get thresholds after training

    @property
    def default_metric(self) -> str:
        """The metric that picks the best epoch unless the config names one."""
        return self.metric_names[0]

    def improves(self, metric: str, score: float, best: float | None) -> bool:
        """Whether ``score`` beats ``best`` (None: nothing yet) on ``metric``."""
        if best is None:
            return True
        return score < best if metric in self.lower_is_better else score > best

    def evaluate(
        self,
        scorer: Scorer,
        split: Split,
        encoded: Sequence[Any],
        wanted: Collection[str] | None = None,
    ) -> dict[str, float]:
        """The metrics on a labelled split of what ``scorer`` answers (``encoded``: the
        split's examples, encoded; ``wanted``: the metrics that must be there, default all)."""
        return self.metrics(scorer.logits(encoded), split.labels, scorer.model.classes)

    def class_counts(self, labels: Sequence[Any], classes: Sequence[str]) -> Counter:
        """How often each class is a label of ``labels`` (encoded, as ``encode_label``
        makes them)."""
        return Counter(classes[label] for label in labels)

    def scores_as_logits(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Logits from class log-probabilities read off a language model (as they are)."""
        return log_probs

    def class_order(self, names: Sequence[str]) -> list[str]:
        """The classes, in logit order, from the label names found in the training data."""
        return sorted(set(names))

    def label_names(self, raw: Any) -> list[str]:
        """The class names one row's raw label holds."""
        raise NotImplementedError

    @staticmethod
    def names_in_list(raw: Any, what: str) -> list[str]:
        """The names of a label that must be a list (``what`` says of what, for the error)."""
        if not isinstance(raw, list | tuple):
            raise DataError(f"{what}, not {type(raw).__name__} {str(raw)[:40]!r}.")
        return [str(name) for name in raw]

    def encode_label(self, names: list[str], index: Mapping[str, int]) -> Any:
        """One row's label (its class names, already mapped) as what the loss reads."""
        raise NotImplementedError

    def check(self, split: Split, slots: Sequence[str], source: str) -> None:
        """Check that a split's examples and labels fit each other (``slots``: the template's
        input slots; ``source``: how errors name the data)."""

    def holdout(self, split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
        """Split off ``fraction`` of a split for validation (seeded)."""
        raise NotImplementedError

    def few_shot(self, split: Split, k: int, seed: int) -> Split:
        """k training examples per class (seeded)."""
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        """What a plain string given to ``predict`` puts in the template's input slot."""
        return text

    def add_labels(self, batch: dict[str, torch.Tensor], labels: Sequence[Any]) -> None:
        """Put the labels of a collated batch into it (``batch["labels"]``)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss: cross-entropy over classes, ignoring ``IGNORED`` labels."""
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORED
        )

    def metrics(
        self, logits: torch.Tensor, labels: Sequence[Any], classes: Sequence[str]
    ) -> dict[str, float]:
        """Metrics of predictions ``logits`` against labels."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The class probabilities of logits: a softmax over the classes."""
        return logits.float().softmax(-1)

    def chosen(self, probabilities: Any) -> Any:
        """The answer one item's named probabilities give: the likeliest class (of each word,
        for a tagger)."""
        if isinstance(probabilities, list):
            return [max(word, key=word.get) for word in probabilities]
        return max(probabilities, key=probabilities.get)

    def named(
        self, probabilities: torch.Tensor, classes: Sequence[str], sizes: Sequence[int]
    ) -> list[Any]:
        """Probabilities as class name -> probability, per item; ``sizes`` is how many
        answers each item has (words, for tagging)."""
        raise NotImplementedError
