"""Data: bind columns to input slots, map labels, check cells, split, sample, collate."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from promptkit.core.readers import Rows
from promptkit.errors import ConfigError, DataError, DataWarning

if TYPE_CHECKING:
    from promptkit.core.config import DataConfig
    from promptkit.tasks import Task


@dataclass
class Split:
    """Examples of one split, ready for the template, with their labels (what the task's
    loss reads: a class index each, or a list of tag indices for tagging)."""

    examples: list[dict[str, Any]]
    labels: list[Any]

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: Sequence[int]) -> Split:
        """The examples at ``indices``."""
        return Split([self.examples[i] for i in indices], [self.labels[i] for i in indices])


def missing(value: Any) -> bool:
    """Whether a cell holds no value: None, NaN, a blank string or an empty list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, list | tuple) and not value


def not_text(value: Any) -> str | None:
    """What is wrong with an input cell, if it is not a text or a list of words: "empty"
    (None, NaN, no words), "a list with an empty word", "a mapping"... (None: nothing). An
    empty or blank text is a text: the prompt still holds its template's."""
    if missing(value) and not isinstance(value, str):
        return f"empty ({_shown(value)})"
    if isinstance(value, Mapping):
        return "a mapping, not a text"
    if isinstance(value, list | tuple) and any(
        not isinstance(w, str) or not w.strip() for w in value
    ):
        return "a list of words with an empty or non-text item"
    if not all(map(_valid_unicode, value if isinstance(value, list | tuple) else [value])):
        return "a text with a character that is not valid Unicode (a lone surrogate)"
    return None


def _valid_unicode(text: Any) -> bool:
    """Whether a text can be encoded (no lone surrogate such as JSON's "\\ud800")."""
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_rows(
    rows: Rows,
    source: str,
    columns: Sequence[str],
    label_column: str | None,
    invalid: str,
    empty_label: bool = False,
) -> Rows:
    """The rows whose ``columns`` (and label) all hold a value. A row that lacks one is an
    error naming the source, the row and the column, or, with ``invalid="drop"``, left out
    with a warning that counts them. ``empty_label``: an empty list is a label (no class, in
    multi-label data)."""
    needed = [*columns, *([label_column] if label_column else [])]
    absent = [c for c in needed if rows and all(c not in row for row in rows)]
    if absent:
        raise DataError(
            f"{source}: no column {absent[0]!r} (its columns: {', '.join(map(str, rows[0]))}). "
            "Map input slots to columns with `inputs: {x: COLUMN}` and name the label column "
            "with `data.label_column`."
        )
    label = (label_column, empty_label)
    bad = [i for i, row in enumerate(rows) if _first_missing(row, columns, *label)]
    if not bad:
        return rows
    if invalid == "drop":
        dropped = set(bad)
        kept = [row for i, row in enumerate(rows) if i not in dropped]
        warnings.warn(
            f"{source}: left out {len(rows) - len(kept)} of {len(rows)} rows with an empty or "
            f"missing {' / '.join(needed)} (data.invalid: drop)",
            DataWarning,
            stacklevel=2,
        )
        return kept
    index = bad[0]
    column, problem = _first_missing(rows[index], columns, *label)
    raise DataError(
        f"{source}: row {index + 1}, column {column!r}: {problem}. Fix the data, or set "
        f"`data.invalid: drop` to leave such rows out ({len(bad)} rows in all)."
    )


def _first_missing(
    row: Mapping[str, Any], columns: Sequence[str], label_column: str | None, empty_label: bool
) -> tuple[str, str] | None:
    """The first bad cell of a row: an input that is not text, or an empty label."""
    for column in columns:
        problem = "absent" if column not in row else not_text(row[column])
        if problem:
            return column, problem
    if label_column and (label_column not in row or _no_label(row[label_column], empty_label)):
        return label_column, f"no label ({_shown(row.get(label_column))})"
    return None


def _no_label(value: Any, empty_label: bool) -> bool:
    return missing(value) and not (empty_label and isinstance(value, list | tuple))


def _shown(value: Any) -> str:
    return "absent" if value is None else repr(value)


def as_examples(
    rows: Sequence[Mapping[str, Any]], inputs: Mapping[str, str], template_inputs: Sequence[str]
) -> list[dict[str, Any]]:
    """Each row with its input slots bound: slot ``x`` reads column ``inputs[x]`` (default:
    the column named ``x``). Other columns stay visible to Jinja. A slot's cell must hold a
    text (or a list of words)."""
    examples = []
    for number, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"item {number + 1} is a {type(row).__name__}, not a row of fields.")
        example = dict(row)
        for slot in template_inputs:
            column = inputs.get(slot, slot)
            if column not in row:
                raise DataError(
                    f"row {number + 1}: input slot <{slot}> reads column {column!r}, "
                    f"which the data lacks (columns: {', '.join(map(str, row))}). Set "
                    f"`inputs: {{{slot}: COLUMN}}`."
                )
            problem = not_text(row[column])
            if problem:
                raise DataError(
                    f"row {number + 1}: input slot <{slot}> reads column {column!r}, which is "
                    f"{problem}."
                )
            example[slot] = row[column]
        examples.append(example)
    return examples


def mapped_labels(
    rows: Sequence[Mapping[str, Any]],
    task: Task,
    label_column: str = "label",
    label_map: Mapping[str, str] | None = None,
) -> list[str]:
    """The class names of every row's label, through ``label_map`` where it has the raw
    value (for tagging, every row's tags, flattened)."""
    if rows and label_column not in rows[0]:
        raise DataError(f"the data has no label column {label_column!r}: set data.label_column.")
    return [name for row in rows for name in _names(row[label_column], task, label_map)]


def _names(raw: Any, task: Task, label_map: Mapping[str, str] | None) -> list[str]:
    if _no_label(raw, task.empty_label):
        raise DataError(f"a label is empty ({_shown(raw)}): every example needs one.")
    mapping = label_map or {}
    return [mapping.get(n, n) for n in task.label_names(raw)]


def label_indices(
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    task: Task,
    label_column: str = "label",
    label_map: Mapping[str, str] | None = None,
) -> list[Any]:
    """Each row's label as the task encodes it; labels outside the classes are an error
    naming them."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(mapped_labels(rows, task, label_column, label_map)) - set(index))
    if unknown and task.has_classes:
        shown = unknown[:10] + ([f"... {len(unknown) - 10} more"] if len(unknown) > 10 else [])
        raise DataError(
            f"labels {shown} in the data are not among the classes {list(classes)}: map them "
            f"with `data.label_map: {{{unknown[0]!r}: CLASS}}`, or add them to the classes the "
            "run names (the keys of head.verbalizer, head.classes, or data.classes)."
        )
    return [task.encode_label(_names(row[label_column], task, label_map), index) for row in rows]


@dataclass
class Splits:
    """The data of a run."""

    train: Split
    validation: Split
    test: Split | None


def read_splits(data: DataConfig, read: Callable[[str], Rows]) -> dict[str, Rows]:
    """The rows of each split the data config names (train is required)."""
    if not data.train:
        raise ConfigError("data.train is missing: give a file, a folder or a split name.")
    specs = {"train": data.train, "validation": data.validation, "test": data.test}
    return {name: read(spec) for name, spec in specs.items() if spec}


def build_splits(
    rows: dict[str, Rows],
    data: DataConfig,
    task: Task,
    classes: Sequence[str],
    to_examples: Callable[[Rows], Rows],
    label_column: str,
    seed: int,
    slots: Sequence[str] = (),
) -> Splits:
    """Label the rows, hold out a validation set if there is none, sample few-shot."""
    splits = {
        name: Split(to_examples(r), label_indices(r, classes, task, label_column, data.label_map))
        for name, r in rows.items()
    }
    for name, split in splits.items():
        task.check(split, slots, f"the {name} data")
    train, validation = splits["train"], splits.get("validation")
    if validation is None:
        train, validation = _held_out(task, train, data.validation_size, seed)
    if data.few_shot:
        train = task.few_shot(train, data.few_shot, seed)
    if data.validation_few_shot:
        validation = task.few_shot(validation, data.validation_few_shot, seed + 1)
    return Splits(train, validation, splits.get("test"))


def _held_out(task: Task, train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """``task.holdout``, with data too small to split an error that says so."""
    try:
        return task.holdout(train, fraction, seed)
    except ValueError as err:  # scikit-learn's: a part would be empty, or a class alone
        raise DataError(
            f"the training data ({len(train)} examples) is too small to hold out "
            f"data.validation_size={fraction} of it for validation ({err}): give a "
            "data.validation file, a larger validation_size, or more training data."
        ) from None


def enough_classes(task: Task, classes: Sequence[str], names: Sequence[str]) -> None:
    """A classifier's classes are at least two (a run of one class learns nothing)."""
    if task.has_classes and len(set(classes)) < 2:
        found = sorted(set(names))
        raise DataError(
            f"the training data has one class only ({found[0] if found else 'none'}): "
            "a classifier needs two or more."
        )


class EncodedDataset(torch.utils.data.Dataset):
    """Encoded examples with their labels, for a DataLoader with ``collate``."""

    def __init__(self, encoded: Sequence[Any], labels: Sequence[Any]) -> None:
        self.encoded, self.labels = encoded, labels

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.encoded[i], self.labels[i]
