"""Text data: rows read and labelled through a template's input slots, references spread
one per row, targets written by a template, and encoded prompts collated into batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from promptkit.core.data import (
    Splits,
    as_examples,
    build_splits,
    enough_classes,
    mapped_labels,
    read_splits,
    validate_rows,
)
from promptkit.core.readers import Rows, read_rows
from promptkit.errors import DataError
from promptkit.tasks.base import IGNORED

if TYPE_CHECKING:
    from promptkit.core.config import DataConfig
    from promptkit.tasks import Task
    from promptkit.text.encoding import EncodedPrompt
    from promptkit.text.template import Template


def load_splits(
    data: DataConfig,
    task: Task,
    classes: Sequence[str] | None,
    inputs: Mapping[str, str],
    template_inputs: Sequence[str],
    seed: int,
    target: Template | None = None,
) -> tuple[Splits, list[str]]:
    """Read, label, split and sample text data; returns the splits and the class names
    (``classes``, else the task's order of the training labels). ``target``: a template
    that writes each row's answer (into ``data.label_column``, which the data must lack)."""
    columns = [inputs.get(slot, slot) for slot in template_inputs]

    def read(spec: str) -> Rows:
        rows = read_rows(spec, data.dataset, data.subset)
        if target is not None:
            rows = with_targets(rows, spec, target, data.label_column)
        rows = validate_rows(rows, spec, columns, data.label_column, data.invalid, task.empty_label)
        return one_row_per_answer(rows, spec, task, data.label_column)

    rows = read_splits(data, read)
    names = mapped_labels(rows["train"], task, data.label_column, data.label_map)
    classes = list(classes or task.class_order(names))
    enough_classes(task, classes, names)
    splits = build_splits(
        rows,
        data,
        task,
        classes,
        lambda r: as_examples(r, inputs, template_inputs),
        data.label_column,
        seed,
        template_inputs,
    )
    return splits, classes


def one_row_per_answer(rows: Rows, source: str, task: Task, column: str) -> Rows:
    """For a task that writes text, a row whose label is a list of references becomes one
    row per reference (one input with several answers: learned from each, scored against
    all); other rows stay as they are."""
    if task.has_classes:
        return rows
    spread: Rows = []
    for number, row in enumerate(rows, 1):
        answers = row[column] if isinstance(row[column], list | tuple) else [row[column]]
        bad = next((a for a in answers if not isinstance(a, str) or not a.strip()), None)
        if bad is not None:
            raise DataError(
                f"{source}: row {number}, column {column!r}: a reference is {bad!r}; a list "
                "of references holds non-empty texts only."
            )
        spread += [{**row, column: answer} for answer in answers]
    return spread


def with_targets(rows: Rows, source: str, target: Template, column: str) -> Rows:
    """The rows with the answer ``target`` writes for each, in ``column``."""
    if rows and column in rows[0]:
        raise DataError(
            f"{source}: head.target writes each answer into data.label_column {column!r}, "
            "which the data already has: name another column with data.label_column."
        )
    return [{**row, column: target.text(row)} for row in rows]


def collate(
    encoded: Sequence[EncodedPrompt], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence (left or right) into tensors.

    ``word_starts`` ``[B, W]`` is the position of each input word's first token (-1 where
    there is none). Text answers become ``labels``: for answers inline after the prompt,
    ``labels[b, t]`` is the token that position ``t`` predicts where that token is part of
    the answer (``IGNORED`` elsewhere); for a decoder's answers, the decoder's targets."""
    width = max(len(e.input_ids) for e in encoded)
    batch: dict[str, list] = {
        "input_ids": [],
        "slot_ids": [],
        "word_ids": [],
        "attention_mask": [],
        "mask_positions": [],
    }
    for e in encoded:
        pad = width - len(e.input_ids)
        left = pad if padding_side == "left" else 0

        def padded(values: list[int], fill: int, left: int = left, pad: int = pad) -> list[int]:
            return [fill] * left + values + [fill] * (pad - left)

        batch["input_ids"].append(padded(e.input_ids, pad_id))
        batch["slot_ids"].append(padded(e.slot_ids, -1))
        batch["word_ids"].append(padded(e.word_ids, -1))
        batch["attention_mask"].append(padded([1] * len(e.input_ids), 0))
        batch["mask_positions"].append(e.mask_position + left if e.mask_position >= 0 else 0)
        if e.answer_start >= 0:
            start = e.answer_start + left - 1  # the position that predicts the answer's first
            batch.setdefault("labels", []).append(
                [IGNORED] * start + padded(e.input_ids, IGNORED)[start + 1 :] + [IGNORED]
            )
    if any(e.target_ids for e in encoded):
        longest = max(len(e.target_ids) for e in encoded)
        batch["labels"] = [
            [*e.target_ids] + [IGNORED] * (longest - len(e.target_ids)) for e in encoded
        ]
    tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    tensors["word_starts"] = _word_starts(tensors["word_ids"])
    return tensors


def _word_starts(word_ids: torch.Tensor) -> torch.Tensor:
    n_words = max(int(word_ids.max()) + 1, 0)
    batch, length = word_ids.shape
    # Each word's smallest position; tokens outside words go to an extra column, dropped.
    column = torch.where(word_ids >= 0, word_ids, n_words)
    positions = torch.arange(length).expand(batch, -1)
    starts = torch.full((batch, n_words + 1), length, dtype=torch.long)
    starts = starts.scatter_reduce(1, column, positions, "amin")[:, :n_words]
    return starts.masked_fill(starts == length, -1)
