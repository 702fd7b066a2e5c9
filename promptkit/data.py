"""Data: load splits (hub or local files), map columns and labels, split, sample, collate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from sklearn.model_selection import train_test_split

from promptkit.encoding import EncodedPrompt
from promptkit.errors import DataError

_FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


@dataclass
class Split:
    """Examples of one split, ready for the template, with label indices (-1 if unlabelled)."""

    examples: list[dict[str, Any]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: Sequence[int]) -> Split:
        """The examples at ``indices``."""
        return Split([self.examples[i] for i in indices], [self.labels[i] for i in indices])


def read_rows(spec: str, dataset: str | None = None, subset: str | None = None) -> list[dict]:
    """Rows of a split: ``spec`` names a split of the hub data set ``dataset``, or a local
    csv / tsv / json / jsonl / parquet file."""
    if dataset:
        return datasets.load_dataset(dataset, subset, split=spec).to_list()
    path = Path(spec)
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{spec}: unknown file type; use one of {', '.join(_FILE_BUILDERS)}, or "
            "set data.dataset to read hub splits."
        )
    if not path.is_file():
        raise DataError(f"{spec}: no such file")
    extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return datasets.load_dataset(builder, data_files=str(path), split="train", **extra).to_list()


def as_examples(
    rows: Sequence[Mapping[str, Any]], inputs: Mapping[str, str], template_inputs: Sequence[str]
) -> list[dict[str, Any]]:
    """Each row with its input slots bound: slot ``x`` reads column ``inputs[x]`` (default:
    the column named ``x``). Other columns stay visible to Jinja."""
    examples = []
    for number, row in enumerate(rows):
        example = dict(row)
        for slot in template_inputs:
            column = inputs.get(slot, slot)
            if column not in row:
                raise DataError(
                    f"row {number}: input slot <{slot}> reads column {column!r}, "
                    f"which the data lacks (columns: {', '.join(row)}). Set "
                    f"`inputs: {{{slot}: COLUMN}}`."
                )
            example[slot] = row[column]
        examples.append(example)
    return examples


def mapped_labels(
    rows: Sequence[Mapping[str, Any]],
    label_column: str = "label",
    label_map: Mapping[str, str] | None = None,
) -> list[str]:
    """Each row's label as a class name (through ``label_map`` where it has the raw value)."""
    if rows and label_column not in rows[0]:
        raise DataError(f"the data has no label column {label_column!r}: set data.label_column.")
    mapping = label_map or {}
    return [mapping.get(str(r[label_column]), str(r[label_column])) for r in rows]


def label_indices(
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    label_column: str = "label",
    label_map: Mapping[str, str] | None = None,
) -> list[int]:
    """Each row's class index; labels outside the classes are an error naming them."""
    index = {c: i for i, c in enumerate(classes)}
    names = mapped_labels(rows, label_column, label_map)
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(
            f"labels {unknown} in the data are not among the classes {list(classes)}: add them "
            f"to the verbalizer, or map them with `data.label_map: {{{unknown[0]!r}: CLASS}}`."
        )
    return [index[n] for n in names]


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off ``fraction`` of the examples, keeping the label proportions (seeded)."""
    keep, held = train_test_split(
        list(range(len(split))), test_size=fraction, random_state=seed, stratify=split.labels
    )
    return split.subset(sorted(keep)), split.subset(sorted(held))


def few_shot(split: Split, k: int, seed: int) -> Split:
    """k examples per class, drawn with a seeded generator (all of a class that has fewer)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=generator).tolist()
    taken: dict[int, int] = {}
    chosen = []
    for i in order:
        label = split.labels[i]
        if taken.get(label, 0) < k:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(i)
    return split.subset(sorted(chosen))


def collate(
    encoded: Sequence[EncodedPrompt],
    pad_id: int,
    padding_side: str = "right",
    labels: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence (left or right) into tensors."""
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
    tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    if labels is not None:
        tensors["labels"] = torch.tensor(list(labels), dtype=torch.long)
    return tensors


class EncodedDataset(torch.utils.data.Dataset):
    """Encoded examples with their labels, for a DataLoader with ``collate``."""

    def __init__(self, encoded: list[EncodedPrompt], labels: list[int]) -> None:
        self.encoded, self.labels = encoded, labels

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[EncodedPrompt, int]:
        return self.encoded[i], self.labels[i]
