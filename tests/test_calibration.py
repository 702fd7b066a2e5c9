"""Contextual calibration: content-free inputs score every class alike afterwards."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config, zero_shot_tagger

import promptkit
from promptkit.errors import ConfigError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import Predictor
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model

SENTIMENT = {"positive": ["great", "good"], "negative": ["terrible", "bad"], "meh": ["fine"]}
TEXTS = ["the movie was great", "a dull plot", "so bad"]


def zero_shot(model_dir, family="gpt2", **extra):
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(model_dir(family))},
            "template": "<x> it was [MASK].",
            "head": {"verbalizer": SENTIMENT},
            "trainable": [],
            **extra,
        }
    )
    return build_model(recipe).eval()


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_content_free_inputs_score_every_class_alike(model_dir, family):
    model = zero_shot(model_dir, family)
    predictor = Predictor(model)
    before = torch.tensor([list(p.values()) for p in predictor.predict_proba(TEXTS)])
    bias = model.calibrate(["N/A", "nothing"])
    assert bias.shape == (3,) and abs(float(bias.sum()) - 1) < 1e-5
    assert not torch.allclose(bias, torch.full((3,), 1 / 3), atol=1e-3)  # there was a bias
    after = torch.tensor([list(p.values()) for p in predictor.predict_proba(TEXTS)])
    expected = before / bias
    assert torch.allclose(after, expected / expected.sum(-1, keepdim=True), atol=1e-5)


def test_one_content_free_input_becomes_uniform(model_dir):
    model = zero_shot(model_dir)
    model.calibrate(["N/A"])
    (probabilities,) = Predictor(model).predict_proba(["N/A"])
    assert all(abs(p - 1 / 3) < 1e-5 for p in probabilities.values())


def test_training_does_not_see_the_calibration(model_dir):
    model = zero_shot(model_dir)
    model.calibrate()
    batch = model.collate(model.encode(model.examples(TEXTS)))
    calibrated = model(batch)
    model.train()
    with torch.no_grad():
        raw = model(batch)
    model.eval()
    assert not torch.allclose(calibrated, raw.float().log_softmax(-1), atol=1e-4)


def test_a_run_saves_and_loads_its_calibration(model_dir, sentiment_data):
    config = run_config(model_dir("gpt2"), sentiment_data, calibration={"content_free": ["N/A"]})
    config["trainer"]["epochs"] = 1
    result = fit(validate_config(config))
    loaded = promptkit.load(result.run_dir)
    (probabilities,) = loaded.predict_proba(["N/A"])
    assert all(abs(p - 1 / 2) < 1e-5 for p in probabilities.values())
    assert (
        "calibrated on content-free inputs: the prompt's mean class probabilities were"
        in (result.run_dir / "train.log").read_text()
    )
    host = promptkit.load({"a": result.run_dir})
    for hosted, alone in zip(host.predict_proba(TEXTS), loaded.predict_proba(TEXTS), strict=True):
        assert hosted == pytest.approx(alone, abs=1e-5)


def test_calibration_from_unlabelled_training_inputs(model_dir, sentiment_data):
    config = run_config(model_dir("gpt2"), sentiment_data, calibration={"unlabelled": 16})
    config["trainer"]["epochs"] = 1
    result = fit(validate_config(config))
    bias = promptkit.load(result.run_dir).model.calibration.exp()
    assert "calibrated on 16 training inputs" in (result.run_dir / "train.log").read_text()
    assert bias.shape == (2,) and abs(float(bias.sum()) - 1) < 1e-5


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ({"content_free": ["N/A"], "unlabelled": 4}, "not both"),
        ({"content_free": []}, "content_free is empty"),
        ({"unlabelled": 0}, "greater than 0"),
    ],
)
def test_calibration_settings_are_checked(model_dir, sentiment_data, calibration, message):
    config = run_config(model_dir("gpt2"), sentiment_data, calibration=calibration)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"content_free": []}, "content-free inputs are empty"),
        ({"content_free": "N/A"}, "a list of texts"),
        ({"content_free": [None]}, "a list of texts"),
        ({"examples": []}, "no examples"),
        ({"content_free": ["N/A"], "examples": [{"x": "great"}]}, "not both"),
    ],
)
def test_calibrate_arguments_are_checked(model_dir, arguments, message):
    model = zero_shot(model_dir)
    with pytest.raises(ConfigError, match=message):
        model.calibrate(**arguments)
    assert model.calibration is None


def test_only_a_classifier_is_calibrated(model_dir):
    with pytest.raises(ConfigError, match="task is tagging"):
        zero_shot_tagger(model_dir("bert")).calibrate()


def test_calibration_sees_the_demonstrations(model_dir, sentiment_data):
    config = run_config(
        model_dir("gpt2"),
        sentiment_data,
        calibration={"content_free": ["N/A"]},
        demonstrations={"per_class": 1},
    )
    config["trainer"]["epochs"] = 1
    loaded = promptkit.load(fit(validate_config(config)).run_dir)
    (probabilities,) = loaded.predict_proba(["N/A"])
    assert all(abs(p - 1 / 2) < 1e-5 for p in probabilities.values())


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_input_is_predicted_as_the_content_free_input_calibration_reads(model_dir, blank):
    model = zero_shot(model_dir)
    (scores,) = Predictor(model).predict_proba([blank])
    bias = model.calibrate([blank])  # the mean of log-probabilities, exponentiated
    torch.testing.assert_close(torch.tensor(list(scores.values())), bias)
