"""Ensembles of prompts: several trained runs of one classification task (other templates,
verbalizers or placements on the same backbone) answering as one.

The members run on one shared backbone (``promptkit.serving.host``), each item once per
member in the same batches; their class probabilities are combined by mean log-probability
(``mean``), by weights learned on labelled data (``weighted``: a softmax over members, fitted
to the log-likelihood of the combination), or by majority vote (``vote``, ties broken by the
mean).
An ensemble is saved as a folder holding ``ensemble.json`` (members, rule, weights) and loaded
back with ``promptkit.load`` (or ``RunEnsemble.load``).

>>> from promptkit import RunEnsemble
>>> members = RunEnsemble.of(["runs/cloze", "runs/review", "runs/question"])  # doctest: +SKIP
>>> members.fit_weights(validation_texts, validation_labels)  # doctest: +SKIP
>>> members.save("runs/ensemble")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from promptkit.core.run_folder import ENSEMBLE_FILE
from promptkit.errors import ConfigError, PromptkitError
from promptkit.serving.host import Host, host_runs
from promptkit.serving.predictor import checked_items
from promptkit.tasks import CLASSIFICATION

Combine = Literal["mean", "weighted", "vote"]
COMBINES = ("mean", "weighted", "vote")


class RunEnsemble:
    """Trained runs of one task, combined.

    Args:
        host: the members on their shared backbone (run name = member name).
        members: member name -> run folder (what ``save`` writes down).
        combine: "mean", "weighted" or "vote".
        weights: member name -> weight, for "weighted" (default: equal).
    """

    def __init__(
        self,
        host: Host,
        members: Mapping[str, str | Path],
        combine: Combine = "mean",
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if combine not in COMBINES:
            raise ConfigError(f"combine is one of {', '.join(COMBINES)}, not {combine!r}.")
        self.host, self.members, self.combine = host, dict(members), combine
        self.classes = _shared_classes(host)
        equal = 1 / len(host.runs)
        self.weights = {name: float((weights or {}).get(name, equal)) for name in host.runs}

    def data_columns(self) -> list[str]:
        """The data columns the members' templates read."""
        columns = (c for model in self.host.models.values() for c in model.data_columns())
        return list(dict.fromkeys(columns))

    def member_log_probs(self, items: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """``[M, N, C]``: each member's class log-probabilities of each item."""
        items = checked_items(items, batch_size)
        pairs = [(name, item) for name in self.host.runs for item in items]
        answers = self.host.answer(self.host.bind(pairs), batch_size)
        probs = torch.tensor([[a.probabilities[c] for c in self.classes] for a in answers])
        return probs.clamp(min=1e-12).log().view(len(self.host.runs), len(items), -1)

    def predict_proba(self, items: Sequence[Any], batch_size: int = 64) -> list[dict[str, float]]:
        """Combined class probabilities of each item."""
        combined = self._combined(self.member_log_probs(items, batch_size))
        return [dict(zip(self.classes, row, strict=True)) for row in combined.tolist()]

    def predict(self, items: Sequence[Any], batch_size: int = 64) -> list[str]:
        """The combined label of each item."""
        return [max(p, key=p.get) for p in self.predict_proba(items, batch_size)]

    def evaluate(
        self, items: Sequence[Any], labels: Sequence[str], batch_size: int = 64
    ) -> dict[str, dict[str, float]]:
        """Accuracy and macro-F1 on labelled items, of the ensemble ("ensemble") and of each
        member alone (by name)."""
        target = self._indices(items, labels)
        log_probs = self.member_log_probs(items, batch_size)
        scored = {name: log_probs[m] for m, name in enumerate(self.host.runs)}
        scored["ensemble"] = self._combined(log_probs).clamp(min=1e-12).log()
        return {
            name: CLASSIFICATION.metrics(scores, target.tolist(), self.classes)
            for name, scores in scored.items()
        }

    def fit_weights(
        self, items: Sequence[Any], labels: Sequence[str], steps: int = 200
    ) -> dict[str, float]:
        """Learn the members' weights on labelled items (e.g. the validation split): the
        weights maximise the log-likelihood of the weighted mean log-probability. Sets
        ``combine`` to "weighted" and returns the weights."""
        target = self._indices(items, labels)
        log_probs = self.member_log_probs(items)
        logits = torch.zeros(len(self.host.runs), requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=0.1)
        for _ in range(steps):
            optimizer.zero_grad()
            mixed = (logits.softmax(0)[:, None, None] * log_probs).sum(0)
            torch.nn.functional.cross_entropy(mixed, target).backward()
            optimizer.step()
        self.combine = "weighted"
        self.weights = dict(zip(self.host.runs, logits.softmax(0).tolist(), strict=True))
        return self.weights

    def save(self, folder: str | Path) -> Path:
        """Write ``ensemble.json`` (members' run folders, rule, weights) into ``folder``."""
        from promptkit.core.run_folder import atomic_text

        folder = check_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)
        document = {
            "format": 1,
            "members": {name: str(Path(path).resolve()) for name, path in self.members.items()},
            "combine": self.combine,
            "weights": self.weights,
        }
        atomic_text(folder / ENSEMBLE_FILE, json.dumps(document, indent=2))
        return folder

    @classmethod
    def of(
        cls,
        runs: Sequence[str | Path] | Mapping[str, str | Path],
        combine: Combine = "mean",
        weights: Mapping[str, float] | None = None,
        device: str | torch.device = "cpu",
    ) -> RunEnsemble:
        """Trained runs of one task (a list of run folders, or names to folders), loaded onto
        one backbone as an ensemble."""
        named = dict(runs) if isinstance(runs, Mapping) else None
        host = host_runs(named if named is not None else list(runs), device=device)
        if named is None:
            named = dict(zip(host.runs, runs, strict=True))
        if len(host.runs) < 2:
            raise PromptkitError("an ensemble takes two or more runs.")
        return cls(host, named, combine, weights)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> RunEnsemble:
        """An ensemble saved with ``save``."""
        path = Path(folder) / ENSEMBLE_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            members, combine = document["members"], document["combine"]
            weights = document["weights"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} cannot be read as an ensemble ({err}).") from None
        return cls.of(members, combine, weights, device)

    def _indices(self, items: Sequence[Any], labels: Sequence[str]) -> torch.Tensor:
        """The class index of each label (labels are class names, one per item)."""
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise PromptkitError(f"labels {unknown} are not among the classes {self.classes}.")
        if len(labels) != len(items):
            raise PromptkitError(f"{len(items)} items but {len(labels)} labels.")
        return torch.tensor([self.classes.index(label) for label in labels])

    def _combined(self, log_probs: torch.Tensor) -> torch.Tensor:
        if self.combine == "vote":
            votes = torch.nn.functional.one_hot(log_probs.argmax(-1), len(self.classes)).sum(0)
            tie_break = log_probs.mean(0).softmax(-1) * 1e-3  # below one vote
            return (votes + tie_break).div(votes.sum(-1, keepdim=True) + 1e-3)
        weights = torch.tensor([self.weights[name] for name in self.host.runs])
        return (weights[:, None, None] * log_probs).sum(0).softmax(-1)


def check_folder(folder: str | Path) -> Path:
    """An ensemble is saved to a new or empty folder (nothing is overwritten)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PromptkitError(f"{folder} is not an empty folder: save the ensemble to a new one.")
    return folder


def _shared_classes(host: Host) -> list[str]:
    """The members' classes, which must be one list (in one order)."""
    described = [host.describe(name) for name in host.runs]
    if not all(model.task.one_class for model in host.models.values()):
        raise ConfigError(
            "an ensemble combines classifiers that give one class per example: every member "
            "must be one (not a tagger, a generator or a multi-label run)."
        )
    first = described[0]["classes"]
    for d in described[1:]:
        if d["classes"] != first:
            raise ConfigError(
                f"members disagree on the classes: {described[0]['run']} has {first}, "
                f"{d['run']} has {d['classes']}; an ensemble combines one task's runs."
            )
    return list(first)
