"""Batched inference over encoded examples, and its metrics."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object

from promptkit.backbone.sharding import is_sharded
from promptkit.core.data import Split
from promptkit.core.distributed import processes
from promptkit.core.progress import Report, track
from promptkit.core.trainable import TrainableModule
from promptkit.tasks import IGNORED


@torch.inference_mode()
def predict_logits(
    model: TrainableModule,
    encoded: Sequence[Any],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool | Report = False,
) -> torch.Tensor:
    """Logits in the order of ``encoded``: ``[N, C]``, or ``[N, W, C]`` for sequence
    labelling (W the most words of any example, zero-padded). Examples are batched by
    length, so that little is spent on padding. Under ``accelerate launch`` each process
    scores its share and all of them get every row. ``progress``: where the batches done
    are reported (``promptkit.core.progress``)."""
    device = device or model.device
    state = processes()
    mine = range(state.process_index, len(encoded), state.num_processes)
    was_training = model.training
    model.eval()
    order = sorted(mine, key=lambda i: len(encoded[i]))
    rows: list[torch.Tensor] = [torch.empty(0)] * len(encoded)
    for chunk in track(_batches(model, order, batch_size, len(encoded)), "scoring", progress):
        batch = model.collate([encoded[i] for i in chunk or [0]])
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


def _batches(
    model: TrainableModule, mine: Sequence[int], batch_size: int, total: int
) -> list[list[int]]:
    """This process's examples in batches. A sharded model gathers its weights in every
    forward, with every process: each then runs as many batches, empty ones (run on any
    example, their outputs unused) after its own."""
    batches = [list(mine[start : start + batch_size]) for start in range(0, len(mine), batch_size)]
    if is_sharded(model):
        most = math.ceil(math.ceil(total / processes().num_processes) / batch_size)
        batches += [[] for _ in range(most - len(batches))]
    return batches


def evaluate(
    model: TrainableModule,
    split: Split,
    encoded: Sequence[Any] | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool | Report = False,
    wanted: Collection[str] | None = None,
) -> dict[str, float]:
    """The model's metrics (its task's) on a labelled split; ``encoded``: the split already
    encoded with its labels; ``wanted``: the metrics that must be there (default: all)."""
    if encoded is None:
        encoded = model.encode(split.examples, split.labels)
    scorer = _Scorer(model, batch_size, device, progress)
    return model.task.evaluate(scorer, split, encoded, wanted)


@dataclass
class _Scorer:
    """The model run for a task's evaluation, batched as ``evaluate`` was asked."""

    model: TrainableModule
    batch_size: int
    device: torch.device | str | None
    progress: bool | Report

    def logits(self, encoded: Sequence[Any]) -> torch.Tensor:
        return predict_logits(self.model, encoded, self.batch_size, self.device, self.progress)

    def loss(self, encoded: Sequence[Any]) -> float:
        return answer_loss(self.model, encoded, self.batch_size, self.device)

    def write(self, examples: Sequence[Mapping[str, Any]]) -> list[str]:
        return self.model.generate(examples, batch_size=self.batch_size, progress=self.progress)


@torch.inference_mode()
def answer_loss(
    model: TrainableModule,
    encoded: Sequence[Any],
    batch_size: int = 64,
    device: torch.device | str | None = None,
    progress: bool | Report = False,
) -> float:
    """The mean loss per answer token of encoded examples with their answers
    (``progress``: as in ``predict_logits``)."""
    device = device or model.device
    state = processes()
    mine = list(range(state.process_index, len(encoded), state.num_processes))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in track(
        _batches(model, mine, batch_size, len(encoded)), "scoring answers", progress
    ):
        batch = model.collate([encoded[i] for i in chunk or [0]])
        batch = {k: v.to(device) for k, v in batch.items()}
        tokens = int((batch["labels"] != IGNORED).sum()) if chunk else 0
        total += float(model.task.loss(model(batch), batch["labels"])) * tokens
        count += tokens
    model.train(was_training)
    if state.num_processes > 1:
        sums = gather_object([(total, count)])
        total, count = sum(t for t, _ in sums), sum(c for _, c in sums)
    return total / max(count, 1)
