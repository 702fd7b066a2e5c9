"""The soft verbalizer (WARP): class vectors started from label words, trained as the head."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

import promptkit
from promptkit.errors import TemplateError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import Predictor
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model

WORDS = {"positive": ["great"], "negative": ["bad"], "meh": ["fine"]}
TEXTS = ["the movie was great", "a dull plot", "so bad", "i loved this film"]


def model_with(model_dir, head: dict, template="<x> it was [MASK]"):
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(model_dir("gpt2"))},
            "template": template,
            "head": head,
            "trainable": ["head"],
        }
    )
    return build_model(recipe).eval()


def test_it_starts_as_the_hard_verbalizer_on_tied_embeddings(model_dir):
    soft = Predictor(model_with(model_dir, {"type": "soft_verbalizer", "verbalizer": WORDS}))
    hard = Predictor(model_with(model_dir, {"verbalizer": WORDS}))
    for s, h in zip(soft.predict_proba(TEXTS), hard.predict_proba(TEXTS), strict=True):
        assert s == pytest.approx(h, abs=1e-5)
    assert soft.model.n_trainable() == 3 * 32 + 3


def test_it_trains_saves_and_loads(model_dir, sentiment_data):
    """(A random tiny backbone's state at [MASK] barely depends on the input, so whether it
    learns the task shows on real models, not here.)"""
    config = run_config(
        model_dir("bert-nodropout"),
        sentiment_data,
        preset="warp",
        head={"type": "soft_verbalizer", "verbalizer": "sentiment"},
    )
    config["trainer"].update(epochs=1, lr={"prompts": 0.01, "head": 0.01})
    result = fit(validate_config(config))
    loaded = promptkit.load(result.run_dir)
    assert loaded.predict(TEXTS) == result.predictor.predict(TEXTS)
    vectors = loaded.model.head.vectors
    start = build_model(validate_config(config).recipe()).head.vectors
    assert not torch.allclose(vectors, start)  # the class vectors trained


def test_it_needs_a_mask(model_dir):
    with pytest.raises(TemplateError, match="soft verbalizer head reads its answer there"):
        model_with(model_dir, {"type": "soft_verbalizer", "verbalizer": WORDS}, "<x> it was")
