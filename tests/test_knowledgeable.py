"""The knowledgeable verbalizer (KPT): many words per class, refined and calibrated by their
prior at [MASK], with word weights that train."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_config

import promptkit
from promptkit.errors import DataWarning, VerbalizerError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.text.config import ModelConfig
from promptkit.text.heads.knowledgeable import refined
from promptkit.text.heads.verbalizer import vocabulary_log_probs
from promptkit.text.model import build_model

WORDS = {"positive": ["great", "good", "wonderful"], "negative": ["terrible", "bad", "dull"]}
TEXTS = ["the movie was great", "a dull plot", "so bad", "i loved this film"]


def kpt(model_dir, **head):
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(model_dir("gpt2"))},
            "template": "<x> it was [MASK]",
            "head": {"type": "knowledgeable", "verbalizer": WORDS, **head},
            "trainable": ["head"],
        }
    )
    return build_model(recipe).eval()


def test_the_prior_is_the_mean_probability_of_each_word(model_dir):
    model = kpt(model_dir)
    examples = model.examples(TEXTS)
    model.head.prepare(model, examples)
    ids = model.head.word_ids[:, :, 0]
    probs = vocabulary_log_probs(model, examples, ids.flatten()).exp()
    expected = probs.mean(0).log().view(ids.shape)
    assert torch.allclose(model.head.log_prior, expected, atol=1e-5)


def test_calibration_divides_each_word_by_its_prior(model_dir):
    calibrated, plain = kpt(model_dir), kpt(model_dir, calibrate=False, refine=0)
    calibrated.head.prepare(calibrated, calibrated.examples(TEXTS))
    calibrated.head.kept.fill_(True)
    batch = calibrated.collate(calibrated.encode(calibrated.examples(TEXTS[:1])))
    word_probs = vocabulary_log_probs(
        plain, plain.examples(TEXTS[:1]), plain.head.word_ids[..., 0].flatten()
    )
    words = word_probs.view(2, 3) - calibrated.head.log_prior
    expected = words.logsumexp(-1) - math.log(3)
    with torch.no_grad():
        assert torch.allclose(calibrated(batch)[0], expected, atol=1e-5)
        # without a prior (all zeros) it is the plain verbalizer's mean of probabilities
        plain_verbalizer = build_model(
            ModelConfig.model_validate(
                {
                    "backbone": {"name": str(model_dir("gpt2"))},
                    "template": "<x> it was [MASK]",
                    "head": {"verbalizer": WORDS},
                    "trainable": ["head"],
                }
            )
        ).eval()
        assert torch.allclose(plain(batch), plain_verbalizer(batch), atol=1e-5)


def test_refinement_drops_improbable_words_and_keeps_each_class_best():
    has = torch.tensor([[True, True, True], [True, True, False]])
    prior = torch.tensor([[-1.0, -1.2, -5.0], [-9.0, -8.0, 0.0]])
    kept = refined(prior, has, 0.5)  # half the median: log 0.5 = -0.69 below it
    assert kept.tolist() == [[True, True, False], [True, True, False]]
    assert refined(prior, has, 0).tolist() == has.tolist()
    assert refined(prior, has, 1e6).tolist() == [[True, False, False], [False, True, False]]


def test_it_trains_saves_and_loads_with_its_prior(model_dir, sentiment_data):
    config = run_config(
        model_dir("bert-nodropout"),
        sentiment_data,
        preset="kpt",
        template="<x> it was [MASK].",
        head={"type": "knowledgeable", "verbalizer": WORDS, "refine": 0.9},
    )
    config["trainer"].update(epochs=1)
    result = fit(validate_config(config))
    loaded = promptkit.load(result.run_dir)
    head = loaded.model.head
    assert loaded.predict(TEXTS) == result.predictor.predict(TEXTS)
    assert torch.equal(head.log_prior, result.predictor.model.head.log_prior)
    assert torch.equal(head.kept, result.predictor.model.head.kept)
    assert head.log_prior.abs().sum() > 0  # estimated, not the zeros it starts as
    assert not torch.equal(head.weights, torch.zeros_like(head.weights))  # the weights trained
    assert set(head.kept_words()) == {"positive", "negative"}


def test_a_negative_refine_share_is_refused(model_dir):
    with pytest.raises(Exception, match="refine"):
        kpt(model_dir, refine=-1)


def test_words_the_tokenizer_cannot_represent_are_left_out_with_a_count(model_dir):
    words = {"positive": ["great", "zzyzx", "qwerty"], "negative": ["bad"]}
    with pytest.warns(DataWarning, match="left out 2 of 4 label words .*: zzyzx, qwerty"):
        model = kpt(model_dir, verbalizer=words)
    assert model.head.kept_words() == {"positive": ["great"], "negative": ["bad"]}
    with pytest.raises(VerbalizerError, match=r"class\(es\) \['negative'\]"):
        kpt(model_dir, verbalizer={"positive": ["great"], "negative": ["zzyzx"]})
