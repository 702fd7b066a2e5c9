"""Zero-shot runs (`trainer.epochs: 0`): nothing trains, the prompt is scored and saved as a
run like any other (so it can be loaded, calibrated, served and ensembled)."""

from __future__ import annotations

import json

import pytest
from conftest import run_config
from vision_helpers import vision_config

import promptkit
from promptkit.errors import ConfigError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit

TEXTS = ["the movie was great", "so bad"]


def test_a_zero_shot_run_is_scored_saved_and_loaded(model_dir, sentiment_data):
    config = run_config(
        model_dir("gpt2"),
        sentiment_data,
        template="<x> it was [MASK]",
        trainable=[],
        calibration={"content_free": ["N/A"]},
    )
    config["trainer"]["epochs"] = 0
    result = fit(validate_config(config))
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["split"] for line in lines] == ["validation", "test"]
    assert result.validation == {
        "best_epoch": 0,
        **{k: lines[0][k] for k in ("accuracy", "macro_f1")},
    }
    loaded = promptkit.load(result.run_dir)
    assert loaded.model.calibration is not None
    pairs = zip(loaded.predict_proba(TEXTS), result.predictor.predict_proba(TEXTS), strict=True)
    for got, want in pairs:
        assert got == pytest.approx(want)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"head": {"type": "classifier"}, "template": "<x>"}, "the classifier head"),
        ({"template": "<x> [P*4] [MASK]"}, r"a \[P\*n\] soft slot starts as a token sampled"),
        ({"template": "<x> [P1:@random] [MASK]"}, r"soft slot \[P1\] starts at random"),
        ({"prompts": {"placement": "prefix"}}, "the prefix's keys and values"),
        (
            {
                "template": "<x> it was [MASK].",
                "ensemble": {"members": [{}, {"head": {"type": "classifier"}, "template": "<x>"}]},
            },
            "the classifier head",
        ),
    ],
)
def test_a_zero_shot_run_of_what_starts_random_is_refused_before_loading(
    tmp_path, sentiment_data, overrides, named
):
    config = run_config(tmp_path / "no-such-model", sentiment_data, trainable=["prompts", "head"])
    config.update(overrides)
    config["trainer"]["epochs"] = 0
    with pytest.raises(ConfigError, match=f"trainer.epochs is 0.*{named}.*trainer.epochs: 1"):
        fit(validate_config(config))
    assert not (sentiment_data / "run").exists()


def test_a_zero_shot_run_from_words_is_scored_and_notes_what_stays_untrained(
    model_dir, sentiment_data
):
    config = run_config(
        model_dir("bert"),
        sentiment_data,
        template="<x> [P1:it was] [MASK]",
        head={
            "type": "soft_verbalizer",
            "verbalizer": {"positive": ["great"], "negative": ["bad"]},
        },
        trainable=["prompts", "head"],
    )
    config["trainer"]["epochs"] = 0
    result = fit(validate_config(config))
    log = (result.run_dir / "train.log").read_text()
    assert "zero-shot (no training (trainable ['prompts', 'head'] stays as built))" in log


def test_a_zero_shot_vision_run_is_refused_before_loading(tmp_path):
    config = vision_config(tmp_path / "images", None, tmp_path / "run")
    config["trainer"]["epochs"] = 0
    with pytest.raises(ConfigError, match="a vision run's head is a new linear layer"):
        fit(config)
    assert not (tmp_path / "run").exists()
