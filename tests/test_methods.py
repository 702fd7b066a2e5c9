"""Method presets: each names a recipe of the literature and builds into a working model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from promptkit import catalog
from promptkit.cli import app
from promptkit.runs.config import validate_config
from promptkit.text.model import build_model
from tests.conftest import run_config

TEXT_METHODS = {
    "prompt_tuning": ("input", {"prompts", "head"}),
    "ptuning_v1": ("input", {"prompts", "head"}),
    "prefix_tuning": ("prefix", {"prompts", "head"}),
    "ptuning_v2": ("prefix", {"prompts", "head"}),
    "deep_prompts": ("deep", {"prompts", "head"}),
    "bitfit": ("input", {"bias", "head"}),
    "norm_tuning": ("input", {"norm", "head"}),
    "linear_probe": ("input", {"head"}),
    "full_finetune": ("input", {"all", "head"}),
}


def test_every_text_method_is_tested():
    assert set(catalog.entries("methods")) == {*TEXT_METHODS, "null_prompt_bitfit", "warp", "kpt"}


@pytest.mark.parametrize("name", sorted(TEXT_METHODS))
def test_a_method_preset_builds_and_runs(model_dir, sentiment_data, name):
    config = run_config(model_dir("bert-encoder"), sentiment_data, head={"type": "classifier"})
    del config["template"]
    config["preset"] = name
    run = validate_config(config)
    placement, groups = TEXT_METHODS[name]
    assert run.prompts.placement == placement and set(run.trainable) == groups
    model = build_model(run.recipe(), ["negative", "positive"])
    assert set(model.groups) == groups
    batch = model.collate(model.encode(model.examples(["the movie was great"])))
    assert model(batch).shape == (1, 2)


def test_null_prompt_with_bitfit(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data)
    del config["template"]
    config["preset"] = "null_prompt_bitfit"
    model = build_model(validate_config(config).recipe())
    assert model.template.source == "<x> [MASK]" and set(model.groups) == {"bias"}


def test_warp(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data, preset="warp")
    del config["template"]
    config["head"] = {"verbalizer": "sentiment"}
    model = build_model(validate_config(config).recipe())
    assert type(model.head).type == "soft_verbalizer"
    assert set(model.groups) == {"prompts", "head"}
    batch = model.collate(model.encode(model.examples(["the movie was great"])))
    assert model(batch).shape == (1, 2)


def test_kpt(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data, preset="kpt")
    del config["template"]
    config["head"] = {
        "verbalizer": {"positive": ["great", "good", "wonderful"], "negative": ["bad"]}
    }
    model = build_model(validate_config(config).recipe())
    assert type(model.head).type == "knowledgeable" and set(model.groups) == {"head"}
    assert model.head.weights.shape == (2, 3)  # a weight per word of each class


def test_the_config_wins_over_the_preset(model_dir, sentiment_data):
    config = run_config(model_dir("bert-encoder"), sentiment_data, head={"type": "classifier"})
    config.update(preset="ptuning_v2", template="[P*4] <x>", prompts={"layers": "last:1"})
    run = validate_config(config)
    assert run.template == "[P*4] <x>"
    assert run.prompts.layers == "last:1" and run.prompts.placement == "prefix"


def test_methods_command_lists_what_trains_and_where(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = CliRunner().invoke(app, ["methods"]).stdout
    for name in [*TEXT_METHODS, "vpt_deep"]:
        assert name in out
    assert "keys and values of every layer" in out
