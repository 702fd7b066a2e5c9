"""Generation: the answer is text, learned by teacher forcing and scored on what the model
writes (sacreBLEU's BLEU and chrF, rouge-score's ROUGE-L) or by its loss."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from promptkit.tasks.base import IGNORED, Scorer, Task

if TYPE_CHECKING:
    from promptkit.core.data import Split
    from promptkit.core.trainable import TrainableModule

TEXT_METRICS = ("bleu", "chrf", "rougeL")


class Generation(Task):
    """One text answer per example. Examples with the same prompt are one input with several
    references (as in E2E NLG): it is generated once and scored against all of them."""

    name = "generation"
    metric_names = ("loss", *TEXT_METRICS)
    lower_is_better = frozenset({"loss"})
    has_classes = False

    def class_order(self, names: Sequence[str]) -> list[str]:
        return []

    def label_names(self, raw: Any) -> list[str]:
        return [str(raw)]

    def encode_label(self, names: list[str], index: Mapping[str, int]) -> str:
        return names[0]

    def holdout(self, split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
        """At random."""
        from sklearn.model_selection import train_test_split  # heavy: imported when needed

        keep, held = train_test_split(
            list(range(len(split))), test_size=fraction, random_state=seed
        )
        return split.subset(sorted(keep)), split.subset(sorted(held))

    def few_shot(self, split: Split, k: int, seed: int) -> Split:
        """k examples, drawn at random (seeded)."""
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
        return split.subset(sorted(order[:k].tolist()))

    def add_labels(self, batch: dict[str, torch.Tensor], labels: Sequence[str]) -> None:
        """Nothing to add: the answers were encoded with the examples."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the answer tokens (``logits`` ``[N, V]``, one row per target)."""
        return torch.nn.functional.cross_entropy(logits.float(), labels[labels != IGNORED])

    def metrics(
        self, predictions: Sequence[str], references: Sequence[Sequence[str]], classes: Any = None
    ) -> dict[str, float]:
        """Corpus BLEU and chrF (sacreBLEU) and mean ROUGE-L F1 (rouge-score, the best
        reference of each prediction), on a 0-100 scale."""
        import sacrebleu
        from rouge_score import rouge_scorer

        predictions = [p.strip() for p in predictions]
        streams = _reference_streams(references)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        rouge = [
            scorer.score_multi(list(refs), p)["rougeL"].fmeasure
            for p, refs in zip(predictions, references, strict=True)
        ]
        return {
            "bleu": float(sacrebleu.corpus_bleu(predictions, streams).score),
            "chrf": float(sacrebleu.corpus_chrf(predictions, streams).score),
            "rougeL": 100.0 * sum(rouge) / max(len(rouge), 1),
        }

    def evaluate(
        self,
        scorer: Scorer,
        split: Split,
        encoded: Sequence[Any],
        wanted: Collection[str] | None = None,
    ) -> dict[str, float]:
        """The loss of the references (teacher-forced), and with it, when wanted, the text
        metrics of what the model writes for each distinct prompt."""
        scores = {"loss": scorer.loss(encoded)}
        if wanted is not None and not set(wanted) & set(TEXT_METRICS):
            return scores
        prompts, references = _grouped(scorer.model, split)
        return {**scores, **self.metrics(scorer.write(prompts), references)}

    def named(self, probabilities: torch.Tensor, classes: Any, sizes: Any) -> list[Any]:
        raise NotImplementedError("a generator writes text: use generate()")


def _grouped(model: TrainableModule, split: Split) -> tuple[list[Any], list[list[str]]]:
    """The distinct prompts of a split (by their encoding) and the references of each."""
    groups: dict[tuple[int, ...], tuple[Any, list[str]]] = {}
    for example, encoded, target in zip(
        split.examples, model.encode(split.examples), split.labels, strict=True
    ):
        key = (*encoded.input_ids, -1, *encoded.slot_ids)
        groups.setdefault(key, (example, []))[1].append(target)
    return [e for e, _ in groups.values()], [refs for _, refs in groups.values()]


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacreBLEU's layout for a varying number of references: one stream per reference
    rank, padded with None, which sacreBLEU leaves out (an empty string would count)."""
    depth = max((len(r) for r in references), default=1)
    return [[r[j] if j < len(r) else None for r in references] for j in range(depth)]
