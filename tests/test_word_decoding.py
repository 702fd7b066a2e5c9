"""Label words of several tokens decoded token by token (``multi_token: decode``): on a causal
LM each token is predicted after the ones before it; on a masked LM [MASK] stands for one mask
per token, filled left to right."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

import promptkit
from promptkit.errors import ConfigError, PromptkitError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model

PHRASES = {"positive": ["great", "good movie"], "negative": ["bad plot", "dull"]}
TEXT = "the movie was great"


def decoding(model_dir, family: str, words=PHRASES, multi_token="decode", **keys):
    recipe = {
        "backbone": {"name": str(model_dir(family))},
        "template": "<x> it was [MASK]",
        "head": {"verbalizer": words, "multi_token": multi_token, "aggregate": "max"},
        "trainable": [],
        **keys,
    }
    return build_model(ModelConfig.model_validate(recipe)).eval()


def ids_of(model, text: str) -> list[int]:
    return model.backbone.tokenizer(" " + text, add_special_tokens=False)["input_ids"]


def class_scores(model, texts=(TEXT,)) -> torch.Tensor:
    with torch.no_grad():
        return model(model.collate(model.encode(model.examples(list(texts)))))


@torch.no_grad()
def test_a_causal_lm_predicts_each_token_after_the_ones_before(model_dir):
    model = decoding(model_dir, "gpt2")
    (encoded,) = model.encode(model.examples([TEXT]))
    context = encoded.input_ids[: encoded.mask_position + 1]

    def sequence_log_prob(word: str) -> float:
        pieces = ids_of(model, word)
        ids = torch.tensor([context + pieces[:-1]])
        log_probs = model.lm(input_ids=ids).logits[0].log_softmax(-1)
        start = len(context) - 1
        return sum(float(log_probs[start + j, p]) for j, p in enumerate(pieces))

    expected = [max(sequence_log_prob(w) for w in PHRASES[c]) for c in ("positive", "negative")]
    assert class_scores(model)[0].tolist() == pytest.approx(expected, abs=1e-4)


@torch.no_grad()
def test_a_masked_lm_fills_its_masks_left_to_right(model_dir):
    model = decoding(model_dir, "bert")
    (encoded,) = model.encode(model.examples([TEXT]))
    ids, at = encoded.input_ids, encoded.mask_position
    mask = model.backbone.tokenizer.mask_token_id

    def sequence_log_prob(word: str) -> float:
        pieces = ids_of(model, word)
        total = 0.0
        for j, piece in enumerate(pieces):
            filled = pieces[:j] + [mask] * (len(pieces) - j)
            row = torch.tensor([ids[:at] + filled + ids[at + 1 :]])
            total += float(model.lm(input_ids=row).logits[0, at + j].log_softmax(-1)[piece])
        return total

    expected = [max(sequence_log_prob(w) for w in PHRASES[c]) for c in ("positive", "negative")]
    assert class_scores(model)[0].tolist() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_words_of_one_token_score_as_first(model_dir, family):
    single = {"positive": ["great", "good"], "negative": ["bad", "dull"]}
    texts = [TEXT, "a dull plot", "so bad"]
    decoded = class_scores(decoding(model_dir, family, single), texts)
    first = class_scores(decoding(model_dir, family, single, "first"), texts)
    assert torch.allclose(decoded, first, atol=1e-5)


def test_it_trains_saves_and_loads(model_dir, sentiment_data):
    head = {"verbalizer": PHRASES, "multi_token": "decode"}
    config = run_config(model_dir("gpt2"), sentiment_data, head=head)
    config["trainer"].update(epochs=1)
    result = fit(validate_config(config))
    loaded = promptkit.load(result.run_dir)
    texts = [TEXT, "so bad"]
    assert loaded.predict(texts) == result.predictor.predict(texts)
    with pytest.raises(PromptkitError, match="decodes its label words token by token"):
        promptkit.load({"a": result.run_dir, "b": result.run_dir})


def test_where_it_does_not_apply(model_dir):
    with pytest.raises(ConfigError, match="encoder-decoder"):
        decoding(model_dir, "t5")
    with pytest.raises(Exception, match="multi_token"):
        ModelConfig.model_validate(
            {
                "backbone": {"name": str(model_dir("gpt2"))},
                "template": "<x> it was [MASK]",
                "head": {"type": "knowledgeable", "verbalizer": PHRASES, "multi_token": "decode"},
            }
        )
