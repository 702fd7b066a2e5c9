"""Sequence labelling: word-level labels on the first sub-token, CoNLL data, seqeval metrics."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from promptkit.core.data import label_indices
from promptkit.core.readers import read_conll, read_rows, tag_names
from promptkit.errors import DataError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run
from promptkit.tasks import IGNORED, TAGGING
from promptkit.text.data import collate
from promptkit.text.encoding import PromptTokenizer
from promptkit.text.template import Template
from tests.conftest import NEGATIVE, POSITIVE, WORDS, run_config, zero_shot_tagger

SUBWORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "##ed", "the", "film"]


def wordpiece() -> PreTrainedTokenizerFast:
    """A tokenizer that splits "playing" into "play" "##ing"."""
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(SUBWORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


@pytest.mark.parametrize("soft_positions", [True, False])
def test_word_starts_point_at_each_words_first_sub_token(soft_positions):
    tokenizer = wordpiece()
    encoder = PromptTokenizer(
        Template("[P*2] the <x> [P3]"), tokenizer, soft_positions=soft_positions
    )
    words = [["playing", "the", "film"], ["played", "playing"]]
    batch = collate(encoder([{"x": w} for w in words]), 0, "left")
    TAGGING.add_labels(batch, [[1, 0, 2], [2, 1]])
    first = torch.tensor([[5, 8, 9], [5, 5, 0]])  # "play", "the", "film" / "play", "play"
    starts = batch["word_starts"]
    assert starts.shape == (2, 3) and starts[1, 2] == -1
    present = starts >= 0
    at_starts = starts.clamp(min=0)
    torch.testing.assert_close(batch["input_ids"].gather(1, at_starts)[present], first[present])
    assert (batch["slot_ids"].gather(1, at_starts)[present] == -1).all()
    assert batch["labels"].tolist() == [[1, 0, 2], [2, 1, IGNORED]]


def test_words_cut_by_max_length_have_no_loss():
    encoder = PromptTokenizer(Template("<x>"), wordpiece(), max_length=3)
    batch = collate(encoder([{"x": ["playing", "the", "film"]}]), 0, "right")
    TAGGING.add_labels(batch, [[1, 0, 2]])
    assert batch["labels"].tolist() == [[1, 0, IGNORED]]  # play ##ing the | film cut


def test_read_conll(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("@paul\tB-person\nrocks\tO\n\nnew\tB-loc\nyork\tI-loc\n")
    assert read_conll(path) == [
        {"tokens": ["@paul", "rocks"], "ner_tags": ["B-person", "O"]},
        {"tokens": ["new", "york"], "ner_tags": ["B-loc", "I-loc"]},
    ]
    assert read_rows(str(path)) == read_conll(path)
    path.write_text("lonely\n")
    with pytest.raises(DataError, match=r"ner.txt:1: expected `token<TAB>tag`"):
        read_conll(path)


def test_tag_indices_of_hub_style_rows():
    tags = datasets.Sequence(datasets.ClassLabel(names=["O", "B-x", "I-x"]))
    data = datasets.Dataset.from_dict(
        {"tokens": [["a", "b"]], "ner_tags": [[1, 2]]},
        features=datasets.Features(
            {"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tags}
        ),
    )
    rows = tag_names(data).to_list()
    assert rows == [{"tokens": ["a", "b"], "ner_tags": ["B-x", "I-x"]}]
    assert label_indices(rows, ["O", "B-x", "I-x"], TAGGING, "ner_tags") == [[1, 2]]
    with pytest.raises(DataError, match=r"labels \['I-x'\]"):
        label_indices(rows, ["O", "B-x"], TAGGING, "ner_tags")


def test_entity_level_metrics():
    classes = ["O", "B-x", "I-x"]
    labels = [[1, 2, 0], [0, 1]]
    logits = torch.nn.functional.one_hot(torch.tensor([[1, 0, 0], [0, 1, 0]]), 3).float()
    scores = TAGGING.metrics(logits, labels, classes)
    # gold: 2 entities; predicted: "B-x O" (a wrong span) and the right one.
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["f1"] == 0.5
    assert scores["accuracy"] == 4 / 5


def ner_rows(n: int, seed: int) -> list[dict]:
    """Sentiment words are entities: "very good" is B-POS I-POS, "awful" B-NEG."""
    g = torch.Generator().manual_seed(seed)
    filler = [w for w in WORDS[:30] if w not in POSITIVE + NEGATIVE + ["very"]]
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(int(torch.randint(3, 7, (1,), generator=g))):
            pick = int(torch.randint(10, (1,), generator=g))
            if pick < 2:
                tokens += ["very", POSITIVE[pick]]
                tags += ["B-POS", "I-POS"]
            elif pick < 4:
                tokens.append(NEGATIVE[pick])
                tags.append("B-NEG")
            else:
                tokens.append(filler[pick])
                tags.append("O")
        rows.append({"tokens": tokens, "ner_tags": tags})
    return rows


@pytest.mark.parametrize(
    ("placement", "template"),
    [("input", "[P*2] <x> [P3]"), ("prefix", "[P*4] <x>"), ("deep", "<x> [P*2]")],
)
def test_a_tagger_trains_saves_and_loads(model_dir, tmp_path, placement, template):
    for name, n, seed in (("train", 96, 0), ("validation", 24, 1), ("test", 24, 2)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in ner_rows(n, seed))
    config = run_config(
        model_dir("bert-encoder"),
        tmp_path,
        template=template,
        inputs={"x": "tokens"},
        head={"type": "token"},
        prompts={"placement": placement},
        trainable=["prompts", "head"],
        trainer={"epochs": 6, "batch_size": 8, "progress": False, "lr": {"head": 1e-2}},
    )
    config["data"] = {k: v for k, v in config["data"].items() if k != "label_map"}
    config["data"]["label_column"] = "ner_tags"
    result = fit(validate_config(config))
    assert result.predictor.classes == ["O", "B-NEG", "B-POS", "I-POS"]
    assert result.validation["f1"] > 0.5 and result.test["f1"] > 0.5
    assert set(result.test) == {"precision", "recall", "f1", "accuracy"}
    sentences = ["the film was very good", "awful"]
    tags = result.predictor.predict(sentences)
    assert [len(t) for t in tags] == [5, 1]
    loaded = load_run(result.run_dir)
    assert loaded.predict(sentences) == tags
    torch.testing.assert_close(loaded.logits(sentences), result.predictor.logits(sentences))


def test_an_empty_list_of_words_is_named(model_dir):
    with pytest.raises(DataError, match="item 2 is an empty list of words"):
        zero_shot_tagger(model_dir("bert")).examples([["a", "film"], []])
