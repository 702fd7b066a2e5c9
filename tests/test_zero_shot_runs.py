"""Zero-shot runs (`trainer.epochs: 0`): nothing trains, the prompt is scored and saved as a
run like any other (so it can be loaded, calibrated, served and ensembled)."""

from __future__ import annotations

import json

import pytest
from conftest import run_config

import promptkit
from promptkit.config import validate_config
from promptkit.pipeline import fit

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
