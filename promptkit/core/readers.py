"""Reading rows of data: local files (csv, tsv, json, jsonl, parquet, CoNLL) and hub data
sets. A file that cannot be read is an error that names it and, where it can, the line.
Cells are read as they are: text stays text ("NA", "007", "null" are not turned into
something else), and only a truly empty cell is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptkit.core import hub
from promptkit.errors import DataError

if TYPE_CHECKING:
    import datasets

Rows = list[dict[str, Any]]
CONLL_SUFFIXES = (".conll", ".txt", ".bio", ".iob")
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def read_rows(spec: str, dataset: str | None = None, subset: str | None = None) -> Rows:
    """Rows of a split: ``spec`` names a split of the hub data set ``dataset``, or a local
    csv / tsv / json / jsonl / parquet file, or a CoNLL file (``token<TAB>tag``)."""
    if dataset:
        return _hub_split(dataset, subset, spec)
    path = Path(spec)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(f"{spec} is a folder: name a data file in it (e.g. {spec}/train.jsonl).")
    if suffix not in (*TABLE_SUFFIXES, *CONLL_SUFFIXES):
        raise DataError(
            f"{spec}: unknown file type; use one of {', '.join(TABLE_SUFFIXES + CONLL_SUFFIXES)}"
            ", or set data.dataset to read hub splits."
        )
    if not path.is_file():
        raise DataError(f"{spec}: no such file")
    text = _text(path) if suffix != ".parquet" else ""
    if suffix != ".parquet" and not text.strip():
        raise DataError(f"{spec}: the file is empty: it has no rows.")
    reader = {".csv": _csv, ".tsv": _csv, ".json": _json, ".jsonl": _jsonl, ".parquet": _parquet}
    rows = reader.get(suffix, _conll)(path, text)
    if not rows:
        raise DataError(f"{spec}: the file has no rows.")
    return rows


def read_conll(path: str | Path) -> Rows:
    """A CoNLL-style file: ``token<TAB>tag`` per line (the tag in the last column), a blank
    line between sentences. Rows have ``tokens`` and ``ner_tags``."""
    return _conll(Path(path), _text(Path(path)))


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start : err.end]!r}): "
            "save it as UTF-8."
        ) from None


def _conll(path: Path, text: str) -> Rows:
    rows, tokens, tags = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
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


def _jsonl(path: Path, text: str) -> Rows:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg}).") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a row is a JSON object, not {row!r:.40}.")
        rows.append(row)
    return rows


def _json(path: Path, text: str) -> Rows:
    """A list of objects, an object of equal-length columns, or JSON Lines."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one object per line
            return _jsonl(path, text)
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}).") from None
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise DataError(f"{path}: its columns have different lengths {sorted(lengths)}.")
        return [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of objects (rows) or an object of columns.")
    return data


def _csv(path: Path, text: str) -> Rows:
    import io

    import pandas as pd  # heavy: imported when a table is first read

    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=separator, dtype=str, keep_default_na=False, na_values=[""]
        )
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path}: not a valid {path.suffix[1:]} file: {err}") from None
    return frame.to_dict("records")


def _parquet(path: Path, _text: str) -> Rows:
    import pandas as pd

    try:
        return pd.read_parquet(path).to_dict("records")
    except Exception as err:  # pyarrow raises many kinds on a damaged file
        raise DataError(f"{path}: not a valid parquet file: {err}") from None


def _hub_split(name: str, subset: str | None, split: str) -> Rows:
    import datasets  # heavy: imported when a hub data set is first read

    if not hub.looks_local(name) and not hub.reachable():
        raise DataError(
            f"data.dataset {name!r}: no such local folder, and the Hugging Face hub cannot be "
            "reached from here. Give a local folder or files (data.train: FILE), or set "
            "HF_HUB_OFFLINE=1 to read a copy already in the cache."
        )
    try:
        data = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # datasets raises many kinds for a name, split or file it lacks
        raise DataError(
            f"data.dataset {name!r}, split {split!r}: cannot be loaded: {err}"
        ) from None
    return tag_names(data).to_list()


def tag_names(data: datasets.Dataset) -> datasets.Dataset:
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
