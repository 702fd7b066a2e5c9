"""Data: file formats, column and label mapping, stratified splits, few-shot sampling."""

import json
from collections import Counter

import pandas as pd
import pytest

from promptkit.core.data import Split, as_examples, label_indices, validate_rows
from promptkit.core.readers import read_rows
from promptkit.errors import DataError
from promptkit.tasks import CLASSIFICATION
from promptkit.text.data import collate
from promptkit.text.encoding import EncodedPrompt

ROWS = [{"sentence": f"s{i}", "label": ["pos", "neg", "neu"][i % 3]} for i in range(30)]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_files_of_every_format(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    assert read_rows(str(path)) == ROWS


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown file type"):
        read_rows(str(tmp_path / "data.xml"))
    with pytest.raises(DataError, match="no such file"):
        read_rows(str(tmp_path / "data.csv"))
    with pytest.raises(DataError, match="is a folder: name a data file in it"):
        read_rows(str(tmp_path))


def test_columns_bind_to_input_slots():
    examples = as_examples(ROWS[:2], {"x": "sentence"}, ("x",))
    assert examples[0]["x"] == "s0" and examples[0]["sentence"] == "s0"
    assert as_examples([{"x": "a"}], {}, ("x",))[0]["x"] == "a"
    with pytest.raises(DataError, match="reads column 'text'.*columns: sentence, label"):
        as_examples(ROWS[:1], {"x": "text"}, ("x",))


def test_labels_map_to_classes_and_unknown_labels_are_named():
    mapping = {"pos": "positive", "neg": "negative", "neu": "neutral"}
    classes = ["negative", "positive", "neutral"]
    labels = label_indices(ROWS[:3], classes, CLASSIFICATION, "label", mapping)
    assert labels == [1, 0, 2]
    with pytest.raises(DataError, match=r"labels \['neu'\] .* not among the classes"):
        label_indices(ROWS, ["pos", "neg"], CLASSIFICATION)
    with pytest.raises(DataError, match="no label column 'y'"):
        label_indices(ROWS, ["pos"], CLASSIFICATION, "y")


def split_of(n_per_class: dict[int, int]) -> Split:
    labels = [label for label, n in n_per_class.items() for _ in range(n)]
    return Split([{"i": i} for i in range(len(labels))], labels)


def test_stratified_split_keeps_proportions_and_is_seeded():
    data = split_of({0: 80, 1: 20})
    train, held = CLASSIFICATION.holdout(data, 0.25, seed=1)
    assert Counter(held.labels) == {0: 20, 1: 5}
    assert len(train) == 75
    assert {e["i"] for e in train.examples}.isdisjoint(e["i"] for e in held.examples)
    assert CLASSIFICATION.holdout(data, 0.25, seed=1)[1].examples == held.examples
    assert CLASSIFICATION.holdout(data, 0.25, seed=2)[1].examples != held.examples


def test_few_shot_takes_k_per_class_seeded():
    data = split_of({0: 50, 1: 50, 2: 3})
    sample = CLASSIFICATION.few_shot(data, 8, seed=3)
    assert Counter(sample.labels) == {0: 8, 1: 8, 2: 3}
    assert CLASSIFICATION.few_shot(data, 8, seed=3).examples == sample.examples
    assert CLASSIFICATION.few_shot(data, 8, seed=4).examples != sample.examples


def test_collate_pads_left_and_right():
    a = EncodedPrompt([1, 2, 3], [-1, 0, -1], [-1, 0, -1], 2)
    b = EncodedPrompt([4], [-1], [0], 0)
    right = collate([a, b], pad_id=9, padding_side="right")
    CLASSIFICATION.add_labels(right, [1, 0])
    assert right["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["mask_positions"].tolist() == [2, 0]
    assert right["labels"].tolist() == [1, 0]
    left = collate([a, b], pad_id=9, padding_side="left")
    assert left["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert left["slot_ids"].tolist() == [[-1, 0, -1], [-1, -1, -1]]
    assert left["mask_positions"].tolist() == [2, 2]


def test_dataset_splits_by_name(tmp_path):
    # The hub route (`data.dataset`) on a local folder: datasets finds splits by file name.
    for split in ("train", "test"):
        pd.DataFrame(ROWS).to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
    assert read_rows("test", dataset=str(tmp_path)) == ROWS


def test_an_empty_text_is_an_input_and_no_value_is_not():
    rows = [{"x": "", "label": "p"}, {"x": "  ", "label": "n"}]
    assert validate_rows(rows, "f.jsonl", ["x"], "label", "error") == rows
    assert as_examples(rows, {}, ["x"])[0]["x"] == ""
    for absent in (None, float("nan"), []):
        with pytest.raises(DataError, match=r"row 1, column 'x': empty"):
            validate_rows([{"x": absent, "label": "p"}], "f.jsonl", ["x"], "label", "error")
