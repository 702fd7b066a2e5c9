"""Demonstrations (LM-BFF): labelled training examples before each query, saved with the run."""

from __future__ import annotations

import warnings

import pytest
from conftest import run_config

import promptkit
from promptkit.errors import ConfigError, DataWarning
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.text.demonstrations import Demonstrations, DemonstrationsConfig
from promptkit.text.modality import TextModality
from promptkit.text.model import check_recipe

QUERIES = ["the movie was fun", "i hated this plot", "a very dull film"]


def config(model_dir, data, family="bert", **demonstrations):
    settings = {"per_class": 1, **demonstrations}
    return validate_config(
        run_config(model_dir(family), data, demonstrations=settings, trainer=_quick())
    )


def _quick():
    return {"epochs": 1, "batch_size": 16, "progress": False}


def prepared(model_dir, data, family="bert", **demonstrations):
    return TextModality().prepare(config(model_dir, data, family, **demonstrations)).model


def tokens(model, ids):
    return model.backbone.tokenizer.convert_ids_to_tokens(ids)


def shown(model, index):
    """What pool example ``index`` reads as, with its answer."""
    demos = model.demonstrations
    word = demos.label_words[demos.labels[index]]
    return f"{demos.examples[index]['x']} it was {word} .".split()


def test_demonstrations_come_before_the_whole_query_with_their_label_words(
    model_dir, sentiment_data
):
    model = prepared(model_dir, sentiment_data, per_class=2)
    examples = model.examples(QUERIES)
    plain = model.tokenizer(examples)
    picks = model.demonstrations.choose(model, examples)
    for encoded, query, chosen in zip(model.encode(examples), plain, picks, strict=True):
        got = tokens(model, encoded.input_ids)
        assert got[0] == "[CLS]" and encoded.input_ids[-len(query) + 1 :] == query.input_ids[1:]
        expected = [t for i in chosen for t in shown(model, i)]
        assert got[1 : 1 + len(expected)] == expected
        assert encoded.mask_position == query.mask_position + len(expected)
        assert got[encoded.mask_position] == "[MASK]"
        labels = [model.demonstrations.labels[i] for i in chosen]
        assert sorted(labels) == [0, 0, 1, 1]  # two of each class
        assert labels[0] != labels[1] and labels[2] != labels[3]  # interleaved
        assert max(encoded.slot_ids[: 1 + len(expected)]) == -1  # no soft slot in them


def test_choices_are_stable_per_example_across_batches_and_calls(model_dir, sentiment_data):
    model = prepared(model_dir, sentiment_data, per_class=2)
    alone = [model.encode(model.examples([q]))[0].input_ids for q in QUERIES]
    batch = [e.input_ids for e in model.encode(model.examples(QUERIES[::-1]))][::-1]
    assert alone == batch == [e.input_ids for e in model.encode(model.examples(QUERIES))]
    picks = model.demonstrations.choose(model, model.examples(QUERIES))
    assert len({tuple(p) for p in picks}) > 1  # drawn per example


def test_the_query_itself_is_never_its_own_demonstration(model_dir, sentiment_data):
    model = prepared(model_dir, sentiment_data, choose="similar")
    demos = model.demonstrations
    for index, chosen in enumerate(demos.choose(model, demos.examples)):
        assert all(demos.keys[i] != demos.keys[index] for i in chosen)


def test_similar_picks_the_most_similar_pool_example(model_dir, sentiment_data):
    model = prepared(model_dir, sentiment_data, choose="similar")
    pool = ["the plot was dull", "a boring story", "the movie was great", "i loved this film"]
    model.demonstrations = Demonstrations(
        [{"x": text} for text in pool],
        [0, 0, 1, 1],
        ["terrible", "great"],
        DemonstrationsConfig(per_class=1, choose="similar"),
        13,
        model.template,
    )
    [chosen] = model.demonstrations.choose(model, model.examples(["i loved this film !"]))
    assert 3 in chosen and 2 not in chosen
    [chosen] = model.demonstrations.choose(model, model.examples(["a boring story"]))
    assert 0 in chosen  # the same text is the query itself, never chosen


def test_truncation_drops_demonstrations_not_the_query_and_warns_with_a_count(
    model_dir, sentiment_data
):
    model = prepared(model_dir, sentiment_data, per_class=2)
    model.tokenizer.max_length = 24
    queries = ["the movie was fun", "the movie was really very very good and fun"]
    examples = model.examples(queries)
    plain = model.tokenizer(examples)
    with pytest.warns(DataWarning, match=r"2 of 2 examples kept fewer demonstrations"):
        encoded = model.encode(examples)
    for got, query in zip(encoded, plain, strict=True):
        assert len(got) <= 24 and got.input_ids[-len(query) + 1 :] == query.input_ids[1:]
    assert len(encoded[0]) > len(encoded[1])  # the longer query keeps fewer
    model.tokenizer.max_length = 256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode(examples)


def test_saved_and_loaded_predicts_the_same_and_hosts_the_same(model_dir, sentiment_data):
    result = fit(config(model_dir, sentiment_data, per_class=1))
    run = result.run_dir
    assert (run / "demonstrations.jsonl").is_file()
    loaded = promptkit.load(run)
    assert loaded.model.demonstrations.examples == result.predictor.model.demonstrations.examples
    assert loaded.predict(QUERIES) == result.predictor.predict(QUERIES)
    expected = loaded.predict_proba(QUERIES)
    host = promptkit.load({"mood": run})
    for got, want in zip(host.predict_proba(QUERIES, run="mood"), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    (run / "demonstrations.jsonl").unlink()
    with pytest.raises(ConfigError, match="demonstrations.jsonl"):
        promptkit.load(run)


def test_per_class_beyond_a_class_s_examples_is_an_error(model_dir, sentiment_data):
    with pytest.raises(ConfigError, match=r"per_class is 1000.*'negative' has \d+"):
        prepared(model_dir, sentiment_data, per_class=1000)


def test_a_head_without_label_words_is_an_error_before_any_model_loads():
    recipe = validate_config(
        {
            "backbone": {"name": "no/such-model"},
            "template": "<x>",
            "head": {"type": "classifier"},
            "demonstrations": {"per_class": 1},
            "data": {"train": "unused.jsonl"},
        }
    ).recipe()
    with pytest.raises(ConfigError, match="classifier head has none"):
        check_recipe(recipe)


@pytest.mark.parametrize("bad", [{"per_class": 1, "choose": "nearest"}, {"per_class": 0}])
def test_unknown_choose_and_bad_per_class_are_errors(model_dir, sentiment_data, bad):
    with pytest.raises(ConfigError, match="demonstrations"):
        validate_config(run_config(model_dir("bert"), sentiment_data, demonstrations=bad))
