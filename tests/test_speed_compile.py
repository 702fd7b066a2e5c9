"""`backbone.compile`: the backbone's layers compiled with torch.compile."""

from __future__ import annotations

import pytest
import torch

from promptkit.core.config import validate
from promptkit.errors import ConfigError
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model


def recipe(folder, **backbone) -> dict:
    return {
        "backbone": {"name": str(folder), **backbone},
        "template": "[P*2] <x>",
        "head": {"type": "classifier", "classes": ["negative", "positive"], "pool": "mean"},
        "prompts": {"placement": "prefix", "layers": "last:1"},
        "trainable": ["prompts", "head"],
    }


def test_compile_is_off_by_default_and_a_bad_value_is_a_clear_error(model_dir):
    assert validate(ModelConfig, recipe(model_dir("llama")), "recipe").backbone.compile is False
    with pytest.raises(ConfigError, match=r"backbone\.compile"):
        validate(ModelConfig, recipe(model_dir("llama"), compile="fast"), "recipe")


@pytest.mark.slow
def test_a_compiled_backbone_gives_the_same_logits_and_gradients(model_dir):
    texts = ["the movie was great", "i hated this boring film"]
    results = []
    for compiled in (False, True):
        model = build_model(
            validate(ModelConfig, recipe(model_dir("llama"), compile=compiled), "r")
        )
        model.eval()
        layers = model.placement.backbone_layers
        assert all(("forward" in vars(layer)) == compiled for layer in layers)
        batch = model.collate(model.encode(model.examples(texts)))
        logits = model(batch)
        logits.square().sum().backward()
        results.append((logits.detach(), model.prompts.table.grad.clone()))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-4)
