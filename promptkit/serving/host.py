"""Many trained runs on one backbone held once in memory.

Each run keeps its template, placement, soft prompts, head and classes; a batch whose rows
belong to different runs is one backbone forward (``promptkit.serving.mixing`` puts each
row's prompts in), after which each head reads its own rows. Text answers are written the
same way: the rows of several generators share one ``generate()`` call when they decode alike.

>>> import promptkit
>>> host = promptkit.load({"sentiment": "runs/mr", "ner": "runs/wnut"})    # doctest: +SKIP
>>> host.predict([("sentiment", "a gripping film"), ("ner", "Ada lives in Paris")])
... # doctest: +SKIP
['positive', ['O', 'O', 'O', 'B-location']]
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from promptkit.core.run_folder import RunFolder, is_ensemble
from promptkit.errors import PromptkitError
from promptkit.serving.mixing import MixedPlacement
from promptkit.serving.predictor import checked_items, load_run
from promptkit.text.data import collate
from promptkit.text.decoding import Written, warn_empty, write
from promptkit.text.encoding import EncodedPrompt
from promptkit.text.heads.base import Outputs, Reading, run_forward
from promptkit.text.model import PromptModel

# Trainable groups that change the backbone's own weights: such a run cannot share it.
_BACKBONE_GROUPS = ("bias", "norm", "all")


@dataclass(frozen=True)
class Row:
    """One item bound to a hosted run: the run's index, the item's encoding, and how many
    words it has (what a tagger labels)."""

    run: int
    encoded: EncodedPrompt
    words: int


@dataclass(frozen=True)
class Answer:
    """The answer to one row: a label, tags or a text, and the class probabilities behind
    a label or tags (None for a text); for a text that is empty, why (a key of
    ``promptkit.text.decoding.EMPTY_CAUSES``)."""

    value: Any
    probabilities: Any = None
    empty: str | None = None


class Host:
    """Several prompt models on one shared backbone, answering mixed batches.

    Args:
        models: run name -> prompt model; all on the same backbone object, none training
            the backbone's own weights.
    """

    def __init__(self, models: Mapping[str, PromptModel]) -> None:
        if not models:
            raise PromptkitError("a host needs at least one run.")
        self.models = dict(models)
        self._list = list(self.models.values())
        first = self._list[0]
        self.backbone = first.backbone
        for name, model in self.models.items():
            if model.backbone is not self.backbone:
                raise PromptkitError(
                    f"run {name!r} is on another backbone object: load the runs together "
                    "with promptkit.load([...]) so that they share one."
                )
            if model.head.expands:
                raise PromptkitError(
                    f"run {name!r} decodes its label words token by token (multi_token: "
                    "decode), in rows of its own that cannot share batches: load it alone with "
                    "promptkit.load(run), or retrain it with multi_token: mean or first."
                )
            if len(self.models) > 1 and not model.placement.mixable:
                raise PromptkitError(
                    f"run {name!r} uses the {model.placement.name} placement, which cannot share "
                    "a batch with other runs (it runs its own forward): load it alone with "
                    "promptkit.load(run)."
                )
        self.placement = MixedPlacement([m.placement for m in self._list], self.backbone.model)
        self.padding_side = "left" if self.backbone.is_causal else "right"
        self.closed = False

    def close(self) -> None:
        """Take the host's hooks off the shared backbone (its models stay usable alone);
        answering afterwards is an error. A host is also a context manager that closes."""
        self.placement.release()
        self.closed = True

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def runs(self) -> list[str]:
        """The hosted runs' names."""
        return list(self.models)

    def describe(self, run: str) -> dict[str, Any]:
        """What a run is: its template, its classes (None for a generator) and its head."""
        model = self.models[self._known(run)]
        return {
            "run": run,
            "template": model.template.source,
            "head": type(model.head).type,
            "classes": model.classes if model.task.has_classes else None,
        }

    def predict(
        self, items: Sequence[Any], run: str | None = None, batch_size: int = 64
    ) -> list[Any]:
        """The answer to each item: a label, a tag per word (tagger), or a text (generator).

        Args:
            items: with ``run``, that run's items (as ``Predictor.predict`` takes them);
                without, ``(run, item)`` pairs (plain items when one run is hosted).
            run: the run of every item.
            batch_size: rows per backbone forward.

        Empty written answers are counted in an ``EmptyAnswersWarning``.
        """
        rows = self.bind(checked_items(items, batch_size), run)
        answers = self.answer(rows, batch_size)
        self._warn_empty(rows, answers)
        return [answer.value for answer in answers]

    def predict_proba(
        self, items: Sequence[Any], run: str | None = None, batch_size: int = 64
    ) -> list[Any]:
        """Class probabilities of each item (of each word, for a tagger); items as in
        ``predict``, all of runs that have classes."""
        rows = self.bind(checked_items(items, batch_size), run)
        self._all_of(rows, classes=True)
        return [answer.probabilities for answer in self.answer(rows, batch_size)]

    def generate(
        self, items: Sequence[Any], run: str | None = None, batch_size: int = 16, **decoding: Any
    ) -> list[str]:
        """The text each item's generator writes; ``decoding`` replaces every run's decoding
        options (``num_beams=4``, ...). Items as in ``predict``, all of generators. Empty
        answers are counted in an ``EmptyAnswersWarning``."""
        rows = self.bind(checked_items(items, batch_size), run)
        self._all_of(rows, classes=False)
        answers = self.answer(rows, batch_size, decoding)
        self._warn_empty(rows, answers)
        return [answer.value for answer in answers]

    def bind(self, items: Sequence[Any], run: str | None = None) -> list[Row]:
        """Each item bound to its run and encoded by that run's model (errors in an item
        show here, before anything runs); items as in ``predict``."""
        if run is None and len(self.models) == 1:
            run = self.runs[0]
        if run is not None:
            pairs = [(self._known(run), item) for item in items]
        else:
            pairs = [self._pair(number, item) for number, item in enumerate(items, 1)]
        by_run: dict[str, list[int]] = {}
        for index, (name, _) in enumerate(pairs):
            by_run.setdefault(name, []).append(index)
        rows: list[Row | None] = [None] * len(pairs)
        for name, indices in by_run.items():
            model = self.models[name]
            examples = model.examples([pairs[i][1] for i in indices])
            words = model.answer_counts(examples)
            number = self.runs.index(name)
            for i, encoded, count in zip(indices, model.encode(examples), words, strict=True):
                rows[i] = Row(number, encoded, count)
        return rows

    def answer(
        self,
        rows: Sequence[Row],
        batch_size: int = 64,
        decoding: Mapping[str, Any] | None = None,
    ) -> list[Answer]:
        """Answers to bound rows of any runs: the rows of classifying runs share backbone
        forwards, and those of generators share ``generate()`` calls (``decoding`` replaces
        their decoding options)."""
        if self.closed:
            raise PromptkitError("this host was closed: make a new one to answer.")
        answers: list[Answer | None] = [None] * len(rows)
        scored = [i for i, r in enumerate(rows) if self._list[r.run].task.has_classes]
        probabilities = self._probabilities([rows[i] for i in scored], batch_size)
        for i, probs in zip(scored, probabilities, strict=True):
            answers[i] = Answer(self._list[rows[i].run].task.chosen(probs), probs)
        written = sorted(set(range(len(rows))) - set(scored))
        texts = self._written([rows[i] for i in written], min(batch_size, 16), decoding or {})
        for i, answer in zip(written, texts, strict=True):
            answers[i] = Answer(answer.text, empty=answer.empty)
        return answers

    def _warn_empty(self, rows: Sequence[Row], answers: Sequence[Answer]) -> None:
        """An ``EmptyAnswersWarning`` when some of the written answers are empty."""
        texts = [not self._list[row.run].task.has_classes for row in rows]
        warn_empty([a.empty for a, text in zip(answers, texts, strict=True) if text])

    def _all_of(self, rows: Sequence[Row], classes: bool) -> None:
        for row in rows:
            if self._list[row.run].task.has_classes != classes:
                name = self.runs[row.run]
                raise PromptkitError(
                    f"run {name!r} writes text, it has no class scores: use predict or generate."
                    if classes
                    else f"run {name!r} labels classes, it does not write text: use predict."
                )

    def _known(self, run: Any) -> str:
        if not isinstance(run, str) or run not in self.models:
            raise PromptkitError(f"no run is named {run!r}; the runs are {self.runs}.")
        return run

    def _pair(self, number: int, item: Any) -> tuple[str, Any]:
        if not (isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2):
            raise PromptkitError(
                f"item {number} is not a (run, item) pair: with several runs hosted "
                f"({self.runs}), give pairs, or name the run with run=..."
            )
        return self._known(item[0]), item[1]

    @torch.inference_mode()
    def _probabilities(self, rows: Sequence[Row], batch_size: int) -> list[Any]:
        answers: list[Any] = [None] * len(rows)
        for chunk, batch, owners in self._batches(rows, batch_size):
            for run, members, logits in self._read(batch, owners):
                model = self._list[run]
                probs = model.task.probabilities(logits).cpu()
                sizes = [rows[chunk[m]].words for m in members]
                named = model.task.named(probs, model.classes, sizes)
                for m, answer in zip(members, named, strict=True):
                    answers[chunk[m]] = answer
        return answers

    @torch.inference_mode()
    def _written(
        self, rows: Sequence[Row], batch_size: int, decoding: Mapping[str, Any]
    ) -> list[Written]:
        """Texts, one ``generate()`` per batch of rows whose runs decode alike."""
        texts = [Written("")] * len(rows)
        groups: dict[str, list[int]] = {}
        configs = {}
        for index, row in enumerate(rows):
            config = self._list[row.run].head.decoding(decoding)
            key = json.dumps(config.model_dump(), sort_keys=True)
            configs[key] = config
            groups.setdefault(key, []).append(index)
        for key, indices in groups.items():
            group = [rows[i] for i in indices]
            for chunk, batch, owners in self._batches(group, batch_size):
                kwargs = self._injected(batch, owners)
                seed = self._list[group[chunk[0]].run].seed
                written = write(
                    self.backbone.model, self.backbone.tokenizer, kwargs, configs[key], seed
                )
                for m, text in zip(chunk, written, strict=True):
                    texts[indices[m]] = text
        return texts

    def _injected(self, batch: dict[str, torch.Tensor], owners: torch.Tensor) -> dict[str, object]:
        """The forward kwargs of a batch: a batch of one run's rows goes through that run's
        own placement (no per-row prompts, masks or stacking to pay for)."""
        first = int(owners[0])
        if bool((owners == first).all()):
            model = self._list[first]
            return model.placement(batch, model.prompts())
        return self.placement(batch, [model.prompts() for model in self._list], owners)

    def _batches(
        self, rows: Sequence[Row], batch_size: int
    ) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]]:
        """Batches of rows of similar length: their indices, the collated batch on the
        backbone's device, and each row's run."""
        device = self.backbone.device
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].encoded))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate(
                [rows[i].encoded for i in chunk], self.backbone.pad_id, self.padding_side
            )
            owners = torch.tensor([rows[i].run for i in chunk], device=device)
            yield chunk, {k: v.to(device) for k, v in batch.items()}, owners

    def _read(
        self, batch: dict[str, torch.Tensor], owners: torch.Tensor
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """One backbone forward for the batch; then, per run in it, its rows and the
        logits its head reads from them."""
        kwargs = self._injected(batch, owners)
        outputs = self._forward(kwargs, batch, owners)
        for run in owners.unique().tolist():
            members = (owners == run).nonzero().squeeze(-1)
            head = self._list[run].head
            rows = {k: v[members] for k, v in batch.items()}
            own = Outputs(
                hidden=None if outputs.hidden is None else outputs.hidden[members],
                logits=None if outputs.logits is None else outputs.logits[members],
            )
            yield run, members.tolist(), self._list[run].finished(head.read(own, rows))

    def _forward(
        self, kwargs: dict[str, object], batch: dict[str, torch.Tensor], owners: torch.Tensor
    ) -> Outputs:
        """One forward for the rows of every run: what each run's head reads of it (hidden
        states over the input, and the LM head's logits where rows read them)."""
        readings = {t: self._list[t].head.reading(batch) for t in owners.unique().tolist()}
        read = {t: r for t, r in readings.items() if r.positions is not None}
        if not read:
            return run_forward(self.backbone.model, kwargs, Reading(hidden=True))
        lead = next(iter(read.values())).lead
        positions = _positions(read, owners)
        return run_forward(self.backbone.model, kwargs, Reading(positions, lead, hidden=True))


def host_runs(
    runs: Sequence[str | Path] | Mapping[str, str | Path],
    backbone: Any = None,
    device: str | torch.device = "cpu",
) -> Host:
    """Several trained runs on one backbone: a list of run folders (each run named after
    its folder), or a mapping of run names to run folders (``backbone``, ``device``: as in
    ``promptkit.load``)."""
    named = _named(runs)
    for run in named.values():  # every run, before any loads
        _hostable(run, shared=len(named) > 1)
    models: dict[str, PromptModel] = {}
    for name, run in named.items():
        models[name] = load_run(run, backbone, device).model
        backbone = models[name].backbone
    return Host(models)


def _hostable(run: str | Path, shared: bool) -> None:
    """A run is hosted as a single text prompt and, when it shares the backbone with other
    runs (``shared``), one that did not train the backbone's own weights (checked on its
    recipe, before anything loads)."""
    if is_ensemble(run):
        raise PromptkitError(
            f"{run} is an ensemble of runs: hosting shares one backbone among single text "
            "prompts; host its runs (NAME=RUN ...), or load it alone with promptkit.load(run)."
        )
    recipe = RunFolder(run).read_recipe()["recipe"]
    joint, vision = recipe.get("ensemble"), recipe.get("modality") == "vision"
    if joint or vision:
        what = "an ensemble trained jointly" if joint else "a vision run"
        raise PromptkitError(
            f"{run} is {what}: hosting several runs on one backbone takes single text "
            "prompts; load it alone with promptkit.load(run)."
        )
    trained = recipe.get("trainable", [])
    own = [group for group in _BACKBONE_GROUPS if group in trained]
    if own and shared:
        raise PromptkitError(
            f"{run} trained the backbone's own weights ({', '.join(own)}), so it cannot share "
            f"the backbone with other runs: load it alone, promptkit.load({str(run)!r})."
        )


def _named(runs: Any) -> dict[str, str | Path]:
    """Task name -> run folder."""
    if isinstance(runs, Mapping):
        bad = [k for k in runs if not isinstance(k, str) or not k]
        if bad:
            raise PromptkitError(f"run names are non-empty texts, not {bad[0]!r}.")
        named = dict(runs)
    elif isinstance(runs, Sequence):
        named = {}
        for run in runs:
            if not isinstance(run, str | Path):
                raise PromptkitError(f"load takes run folders' paths, not a {type(run).__name__}.")
            name = Path(run).resolve().name
            if name in named:
                raise PromptkitError(
                    f"two runs are named {name!r} after their folders: name the runs with a "
                    "mapping, promptkit.load({'a': path_a, 'b': path_b})."
                )
            named[name] = run
    else:
        raise PromptkitError(
            f"load takes a run folder, a list of them or a mapping of names to them, not a "
            f"{type(runs).__name__}."
        )
    if not named:
        raise PromptkitError("load was given no run.")
    return named


def _positions(read: Mapping[int, Reading], owners: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: each row's positions its run's head reads logits at (0 where none)."""
    width = max(r.positions.shape[1] for r in read.values())
    positions = torch.zeros(len(owners), width, dtype=torch.long, device=owners.device)
    for run, reading in read.items():
        rows = owners == run
        positions[rows, : reading.positions.shape[1]] = reading.positions[rows]
    return positions
