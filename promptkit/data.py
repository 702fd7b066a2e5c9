"""Data: load splits (hub or local files), map columns and labels, split, sample, collate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from promptkit.encoding import EncodedPrompt

if TYPE_CHECKING:
    import datasets
from promptkit.errors import DataError

_CONLL_SUFFIXES = (".conll", ".txt", ".bio", ".iob")
_FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}


Label = int | list[int]  # a class index, or one tag index per word (sequence labelling)
IGNORED = -100  # label of a position that has no loss (padding, words cut by max_length)


@dataclass
class Split:
    """Examples of one split, ready for the template, with their labels: a class index each,
    or a list of tag indices (one per word) for sequence labelling."""

    examples: list[dict[str, Any]]
    labels: list[Label]

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: Sequence[int]) -> Split:
        """The examples at ``indices``."""
        return Split([self.examples[i] for i in indices], [self.labels[i] for i in indices])


def read_rows(spec: str, dataset: str | None = None, subset: str | None = None) -> list[dict]:
    """Rows of a split: ``spec`` names a split of the hub data set ``dataset``, or a local
    csv / tsv / json / jsonl / parquet file, or a CoNLL file (``token<TAB>tag``)."""
    import datasets  # heavy: imported when data is first read

    if dataset:
        return _tag_names(datasets.load_dataset(dataset, subset, split=spec)).to_list()
    path = Path(spec)
    suffix = path.suffix.lower()
    builder = _FILE_BUILDERS.get(suffix)
    if builder is None and suffix not in _CONLL_SUFFIXES:
        raise DataError(
            f"{spec}: unknown file type; use one of "
            f"{', '.join([*_FILE_BUILDERS, *_CONLL_SUFFIXES])}, or set data.dataset to read "
            "hub splits."
        )
    if not path.is_file():
        raise DataError(f"{spec}: no such file")
    if builder is None:
        return read_conll(path)
    extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return datasets.load_dataset(builder, data_files=str(path), split="train", **extra).to_list()


def _tag_names(data: datasets.Dataset) -> datasets.Dataset:
    """Sequences of class labels (e.g. ``ner_tags``) as their names, not their indices."""
    import datasets

    for column, feature in data.features.items():
        inner = getattr(feature, "feature", None)
        if isinstance(inner, datasets.ClassLabel):
            data = data.map(
                lambda row, c=column, f=inner: {c: f.int2str(row[c])},
                features=datasets.Features(
                    {**data.features, column: datasets.List(datasets.Value("string"))}
                ),
            )
    return data


def read_conll(path: str | Path) -> list[dict[str, list[str]]]:
    """A CoNLL-style file: ``token<TAB>tag`` per line (the tag in the last column), a blank
    line between sentences. Rows have ``tokens`` and ``ner_tags``."""
    rows, tokens, tags = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            if tokens:
                rows.append({"tokens": tokens, "ner_tags": tags})
            tokens, tags = [], []
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: expected `token<TAB>tag`, got {line!r}")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


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
    """Each row's label as a class name (through ``label_map`` where it has the raw value);
    for sequence labelling, the flat list of every row's tags."""
    if rows and label_column not in rows[0]:
        raise DataError(f"the data has no label column {label_column!r}: set data.label_column.")
    return [name for row in rows for name in _names(row[label_column], label_map)]


def _names(raw: Any, label_map: Mapping[str, str] | None) -> list[str]:
    mapping = label_map or {}
    values = raw if isinstance(raw, list) else [raw]
    return [mapping.get(str(v), str(v)) for v in values]


def tag_classes(names: Sequence[str]) -> list[str]:
    """Tag names in a stable order, the outside tag "O" first (words the model cannot see,
    cut by max_length, are predicted as the first class)."""
    return sorted(set(names), key=lambda n: (n != "O", n))


def label_indices(
    rows: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    label_column: str = "label",
    label_map: Mapping[str, str] | None = None,
) -> list[int]:
    """Each row's class index (a list of tag indices where the label is a list of tags);
    labels outside the classes are an error naming them."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(mapped_labels(rows, label_column, label_map)) - set(index))
    if unknown:
        raise DataError(
            f"labels {unknown} in the data are not among the classes {list(classes)}: add them "
            f"to the verbalizer, or map them with `data.label_map: {{{unknown[0]!r}: CLASS}}`."
        )
    labels: list[Label] = []
    for row in rows:
        indices = [index[n] for n in _names(row[label_column], label_map)]
        labels.append(indices if isinstance(row[label_column], list) else indices[0])
    return labels


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off ``fraction`` of the examples, keeping the label proportions (seeded; tag
    sequences are split at random)."""
    from sklearn.model_selection import train_test_split  # heavy: imported when first needed

    sequences = bool(split.labels) and isinstance(split.labels[0], list)
    keep, held = train_test_split(
        list(range(len(split))),
        test_size=fraction,
        random_state=seed,
        stratify=None if sequences else split.labels,
    )
    return split.subset(sorted(keep)), split.subset(sorted(held))


def few_shot(split: Split, k: int, seed: int) -> Split:
    """k examples per class, drawn with a seeded generator (all of a class that has fewer);
    for sequence labelling, k sentences."""
    if split.labels and isinstance(split.labels[0], list):
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
        return split.subset(sorted(order[:k].tolist()))
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
    labels: Sequence[Label] | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence (left or right) into tensors.

    ``word_starts`` ``[B, W]`` is the position of each input word's first token (-1 where
    there is none); tag-sequence labels are padded to W with ``IGNORED``, which also marks
    words that have no token."""
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
    tensors["word_starts"] = _word_starts(tensors["word_ids"], labels)
    if labels is not None:
        tensors["labels"] = _label_tensor(labels, tensors["word_starts"])
    return tensors


def _word_starts(word_ids: torch.Tensor, labels: Sequence[Label] | None) -> torch.Tensor:
    n_words = max(int(word_ids.max()) + 1, 0)
    if labels and isinstance(labels[0], list):
        n_words = max(n_words, max(len(tags) for tags in labels))
    batch, length = word_ids.shape
    # Each word's smallest position; tokens outside words go to an extra column, dropped.
    column = torch.where(word_ids >= 0, word_ids, n_words)
    positions = torch.arange(length).expand(batch, -1)
    starts = torch.full((batch, n_words + 1), length, dtype=torch.long)
    starts = starts.scatter_reduce(1, column, positions, "amin")[:, :n_words]
    return starts.masked_fill(starts == length, -1)


def _label_tensor(labels: Sequence[Label], word_starts: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels[0], list):
        return torch.tensor(list(labels), dtype=torch.long)
    out = torch.full(word_starts.shape, IGNORED, dtype=torch.long)
    for row, tags in enumerate(labels):
        out[row, : len(tags)] = torch.tensor(tags, dtype=torch.long)
    return out.masked_fill(word_starts < 0, IGNORED)


class EncodedDataset(torch.utils.data.Dataset):
    """Encoded examples with their labels, for a DataLoader with ``collate``."""

    def __init__(self, encoded: list[EncodedPrompt], labels: list[Label]) -> None:
        self.encoded, self.labels = encoded, labels

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[EncodedPrompt, Label]:
        return self.encoded[i], self.labels[i]
