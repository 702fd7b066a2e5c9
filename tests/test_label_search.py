"""Automatic label-word search: the likelihood-ratio scoring on hand-made log-probabilities,
the whole search on tiny models (one built so the right words are provable), the verbalizer
file it writes, the CLI, and its errors."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import NEGATIVE, POSITIVE, make_tokenizer, run_config, sentiment_rows
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from promptkit.cli import app
from promptkit.errors import ConfigError, DataError, TemplateError
from promptkit.runs.config import validate_config
from promptkit.text import label_search
from promptkit.text.encoding import word_tokens
from promptkit.text.label_search import (
    choose_words,
    likelihood_ratios,
    search_label_words,
    whole_words,
    write_verbalizer,
)
from promptkit.text.label_words import Verbalizer
from promptkit.text.model import build_model

runner = CliRunner()
WORDS = {"positive": ["great", "good"], "negative": ["terrible", "bad"]}


def _model(folder, template="<x> it was [MASK].", head=None):
    recipe = {
        "backbone": {"name": str(folder)},
        "template": template,
        "inputs": {"x": "text"},
        "head": head or {"verbalizer": WORDS},
        "trainable": [],
        "data": {"train": "unused"},
    }
    return build_model(validate_config(recipe).recipe())


def _labels(rows):
    """Class indices for ``WORDS``'s classes (positive first) of the toy rows."""
    return [1 - row["label"] for row in rows]


def _log_probs(rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_likelihood_ratio_ranks_words_against_the_whole_data():
    # Token 0 is the likeliest everywhere (a word like "the"): its ratio is 0 and it is
    # never chosen. Token 1 marks class 0, token 3 class 1; 2 and 4 weaker.
    class_0 = [0.5, 0.3, 0.15, 0.04, 0.01]
    class_1 = [0.5, 0.02, 0.08, 0.35, 0.05]
    log_probs = _log_probs([class_0] * 3 + [class_1] * 3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    ratios = likelihood_ratios(log_probs, labels, 2)
    overall = [(a + b) / 2 for a, b in zip(class_0, class_1, strict=True)]
    expected = [
        [math.log(p / q) for p, q in zip(class_0, overall, strict=True)],
        [math.log(p / q) for p, q in zip(class_1, overall, strict=True)],
    ]
    assert torch.allclose(ratios, torch.tensor(expected, dtype=torch.float64))
    assert choose_words(log_probs, labels, 2, per_class=2, candidates=5) == [[1, 2], [3, 4]]
    assert choose_words(log_probs, labels, 2, per_class=1, candidates=5) == [[1], [3]]


def test_pruning_prefers_training_accuracy_to_a_rare_strong_word():
    # Token 1 has the best ratio for class 0 but only from one example; token 2 is
    # likelier on every class-0 example: the pruned verbalizer takes token 2.
    first = [0.05, 0.55, 0.3, 0.1]
    other_0 = [0.599, 0.001, 0.3, 0.1]
    class_1 = [0.599, 0.001, 0.1, 0.3]
    log_probs = _log_probs([first, other_0, other_0] + [class_1] * 3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    ratios = likelihood_ratios(log_probs, labels, 2)
    assert ratios[0, 1] > ratios[0, 2] > 0
    assert choose_words(log_probs, labels, 2, per_class=1, candidates=4) == [[2], [3]]


def test_a_word_goes_to_the_class_where_it_scores_highest():
    log_probs = _log_probs([[0.6, 0.3, 0.1]] * 2 + [[0.5, 0.1, 0.4]] * 2 + [[0.2, 0.1, 0.7]] * 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    chosen = choose_words(log_probs, labels, 3, per_class=3, candidates=3)
    tokens = [t for group in chosen for t in group]
    assert len(tokens) == len(set(tokens))
    ratios = likelihood_ratios(log_probs, labels, 3)
    for c, group in enumerate(chosen):
        assert all(int(ratios[:, t].argmax()) == c for t in group)


@pytest.fixture(scope="module")
def copying_lm(tmp_path_factory):
    """A tiny Llama that predicts, at [MASK], the token just before it: its layers add
    nothing (zero output projections) and its one-hot embeddings and LM head make that
    token's logit the only one that is not zero. With ``<x> [MASK]`` it answers the toy
    review's last word, so the right label words are the positive and negative words."""
    tokenizer = make_tokenizer(masked=False)
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, 64))
        model.lm_head.weight.copy_(2 * torch.eye(vocab, 64))
    folder = tmp_path_factory.mktemp("copying-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_search_finds_the_provable_words(copying_lm):
    model = _model(copying_lm, "<x> [MASK]")
    rows = sentiment_rows(48)
    words = search_label_words(model, model.examples(rows), _labels(rows), per_class=3)
    assert list(words) == ["positive", "negative"]
    assert len(words["positive"]) == len(words["negative"]) == 3
    assert set(words["positive"]) <= set(POSITIVE)
    assert set(words["negative"]) <= set(NEGATIVE)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "t5", "bart"])
def test_search_gives_whole_disjoint_words_on_every_kind(model_dir, kind):
    model = _model(model_dir(kind))
    rows = sentiment_rows(24)
    words = search_label_words(model, model.examples(rows), _labels(rows), 2, 10, batch_size=7)
    tokenizer = model.backbone.tokenizer
    chosen = [w for group in words.values() for w in group]
    assert len(chosen) == len(set(chosen))
    assert all(len(group) == 2 for group in words.values())
    assert all(len(w) >= 2 and w.isalpha() for w in chosen)
    assert all(len(word_tokens(tokenizer, w, True)) == 1 for w in chosen)
    again = search_label_words(model, model.examples(rows), _labels(rows), 2, 10)
    assert again == words  # deterministic, whatever the batch size


def test_whole_words_leave_out_specials_pieces_and_single_letters():
    words = set(whole_words(make_tokenizer(masked=True), space=True).values())
    assert {"great", "terrible", "movie"} <= words
    assert not words & {"[MASK]", "[CLS]", "a", "i", ".", ","}


def test_the_file_round_trips_and_a_run_builds_with_it(model_dir, sentiment_data, tmp_path):
    found = {"positive": ["great", "fun"], "negative": ["awful", "dull"]}
    path = write_verbalizer(tmp_path / "words.yaml", found, "searched")
    assert yaml.safe_load(path.read_text())["description"] == "searched"
    assert Verbalizer.from_yaml(path).words == found
    config = validate_config(
        run_config(model_dir("bert"), sentiment_data, head={"verbalizer": str(path)})
    )
    assert build_model(config.recipe()).classes == ["positive", "negative"]
    with pytest.raises(ConfigError, match="exists"):
        write_verbalizer(path, WORDS, "again")
    write_verbalizer(path, WORDS, "again", overwrite=True)
    assert Verbalizer.from_yaml(path).words == WORDS


def _config_file(path, model_folder, data_folder, **overrides):
    path.write_text(yaml.safe_dump(run_config(model_folder, data_folder, **overrides)))
    return path


def test_cli_writes_the_words_and_refuses_to_overwrite(model_dir, sentiment_data, tmp_path):
    config = _config_file(
        tmp_path / "run.yaml", model_dir("bert"), sentiment_data, head={"type": "verbalizer"}
    )
    output = tmp_path / "words.yaml"
    command = ["verbalizer", "search", str(config), "--output", str(output)]
    result = runner.invoke(app, [*command, "--per-class", "2", "--candidates", "10"])
    assert result.exit_code == 0, result.output
    words = Verbalizer.from_yaml(output).words
    assert list(words) == ["negative", "positive"]  # from the data, through label_map
    assert all(len(group) == 2 for group in words.values())
    assert all(w in result.output for group in words.values() for w in group)
    before = output.read_text()
    refused = runner.invoke(app, command)
    assert refused.exit_code == 2
    assert "exists" in refused.output and "Traceback" not in refused.output
    assert output.read_text() == before
    replaced = runner.invoke(app, [*command, "--overwrite", "--per-class", "1"])
    assert replaced.exit_code == 0, replaced.output
    assert all(len(group) == 1 for group in Verbalizer.from_yaml(output).words.values())


def test_cli_reports_too_few_examples_without_traceback(model_dir, sentiment_data, tmp_path):
    config = _config_file(tmp_path / "run.yaml", model_dir("bert"), sentiment_data)
    output = tmp_path / "words.yaml"
    result = runner.invoke(
        app,
        ["verbalizer", "search", str(config), "--output", str(output), "--set", "data.few_shot=1"],
    )
    assert result.exit_code == 2
    assert "positive: 1" in result.output and "negative: 1" in result.output
    assert "Traceback" not in result.output
    assert not output.exists()


@pytest.fixture
def no_forward(monkeypatch):
    """Any forward of the search fails the test: its errors come before one."""

    def forward(*args, **kwargs):
        raise AssertionError("the search ran a forward")

    monkeypatch.setattr(label_search, "vocabulary_log_probs", forward)


def test_too_few_examples_per_class(model_dir, no_forward):
    model = _model(model_dir("bert"))
    rows = sentiment_rows(5)  # labels 0 1 0 1 0: two positive, three negative
    with pytest.raises(DataError, match="positive: 1"):
        search_label_words(model, model.examples(rows[:3]), _labels(rows[:3]))


def test_labels_out_of_range(model_dir, no_forward):
    model = _model(model_dir("bert"))
    rows = sentiment_rows(4)
    with pytest.raises(DataError, match="1 of 4 labels"):
        search_label_words(model, model.examples(rows), [0, 1, 0, 2])


def test_template_without_mask(model_dir, no_forward):
    head = {"type": "classifier", "classes": ["positive", "negative"]}
    model = _model(model_dir("bert"), "<x> it was", head)
    rows = sentiment_rows(4)
    with pytest.raises(TemplateError, match="no \\[MASK\\]"):
        search_label_words(model, model.examples(rows), _labels(rows))


def test_backbone_without_lm_head(model_dir, no_forward):
    head = {"type": "classifier", "classes": ["positive", "negative"]}
    model = _model(model_dir("bert-encoder"), head=head)
    rows = sentiment_rows(4)
    with pytest.raises(ConfigError, match="without an LM head"):
        search_label_words(model, model.examples(rows), _labels(rows))


def test_per_class_beyond_candidates(model_dir, no_forward):
    model = _model(model_dir("bert"))
    rows = sentiment_rows(4)
    with pytest.raises(ConfigError, match="per_class <= candidates"):
        search_label_words(model, model.examples(rows), _labels(rows), per_class=5, candidates=3)


def test_labels_may_be_a_tensor(copying_lm):
    model = _model(copying_lm, "<x> [MASK]")
    rows = sentiment_rows(12)
    labels = torch.tensor(_labels(rows))
    words = search_label_words(model, model.examples(rows), labels, per_class=1)
    assert words == search_label_words(model, model.examples(rows), _labels(rows), per_class=1)


def test_a_config_without_a_verbalizer_head_is_named(model_dir, sentiment_data):
    from promptkit.text.label_search import search_config

    config = validate_config(
        run_config(
            model_dir("bert"),
            sentiment_data,
            template="<x> [MASK]",
            head={"type": "classifier", "classes": ["negative", "positive"]},
            trainable=["head"],
        )
    )
    with pytest.raises(ConfigError, match="this config's head is a classifier"):
        search_config(config)


def test_a_multi_label_config_is_refused_before_loading(sentiment_data, tmp_path):
    from promptkit.text.label_search import search_config

    config = run_config(tmp_path / "no-such-model", sentiment_data)
    config["head"] = {**config["head"], "multi_label": True}
    with pytest.raises(ConfigError, match="this config's head is multi-label"):
        search_config(validate_config(config))


def test_counts_and_examples_are_checked_before_loading(sentiment_data, tmp_path):
    from promptkit.text.label_search import search_config

    config = validate_config(run_config(tmp_path / "no-such-model", sentiment_data))
    with pytest.raises(ConfigError, match="per_class 10000000000 and candidates 50"):
        search_config(config, per_class=10**10)
    few = validate_config(
        run_config(
            tmp_path / "no-such-model",
            sentiment_data,
            data={**config.data.model_dump(), "few_shot": 1},
        )
    )
    with pytest.raises(DataError, match="at least 2 examples per class"):
        search_config(few)
