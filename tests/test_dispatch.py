"""Backbones larger than the memory at hand: a device map offloads frozen layers to disk, and
prompts predict, train and serve through them with the answers of the whole model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import prompt_model, review_batch, run_config, seeded_step
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import promptkit
from promptkit.backbone.loading import load_backbone
from promptkit.cli import app
from promptkit.core.config import validate
from promptkit.errors import ConfigError
from promptkit.runs import fitting as pipeline
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.server import create_app
from promptkit.text.config import BackboneConfig
from promptkit.text.decoding import generate

runner = CliRunner()
SENTIMENT = {"positive": ["great", "good"], "negative": ["terrible", "bad"]}
PLACEMENTS = {
    "input": {"template": "<x> it was [P1][P2] [MASK]."},
    "prefix": {"template": "[P*3] <x> it was [MASK].", "prompts": {"placement": "prefix"}},
    "deep": {"template": "[P*3] <x> it was [MASK].", "prompts": {"placement": "deep"}},
}


def model_bytes(folder) -> int:
    return load_backbone(str(folder)).model.get_memory_footprint()


def capped(folder, **extra) -> dict:
    """A backbone section whose memory cap holds a third of the model: the rest is on disk."""
    return {
        "name": str(folder),
        "device_map": "auto",
        "max_memory": {"cpu": model_bytes(folder) // 3},
        **extra,
    }


def offloaded_model(folder, **recipe):
    recipe = {"head": {"verbalizer": SENTIMENT}, **PLACEMENTS["input"], **recipe}
    return prompt_model(folder, backbone=capped(folder), **recipe)


def test_a_memory_cap_puts_layers_on_disk(model_dir):
    folder = model_dir("llama")
    backbone = load_backbone(
        str(folder), **validate(BackboneConfig, capped(folder), "b").dispatch()
    )
    assert backbone.dispatched
    assert "disk" in backbone.model.hf_device_map.values()
    offloaded = [n for n, p in backbone.model.named_parameters() if p.is_meta]
    assert any(".layers." in name for name in offloaded)
    assert backbone.device == torch.device("cpu")
    assert backbone.fingerprint() == load_backbone(str(folder)).fingerprint()


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_prompts_compute_and_train_as_on_the_whole_backbone(model_dir, placement):
    folder = model_dir("llama")
    recipe = {"head": {"verbalizer": SENTIMENT}, **PLACEMENTS[placement]}
    whole = prompt_model(folder, **recipe)
    offloaded = offloaded_model(folder, **PLACEMENTS[placement])
    assert any(p.is_meta for p in offloaded.backbone.model.parameters())
    batch = review_batch(whole)
    logits, grads = seeded_step(whole, batch)
    offloaded_logits, offloaded_grads = seeded_step(offloaded, batch)
    assert torch.equal(offloaded_logits, logits)
    assert grads.keys() == offloaded_grads.keys()
    assert all(torch.equal(offloaded_grads[n], grads[n]) for n in grads)


def test_activation_checkpointing_recomputes_through_offloaded_layers(model_dir):
    folder = model_dir("llama")
    whole = prompt_model(folder, head={"verbalizer": SENTIMENT}, **PLACEMENTS["prefix"])
    offloaded = offloaded_model(folder, **PLACEMENTS["prefix"])
    offloaded.enable_checkpointing()
    batch = review_batch(whole)
    _, grads = seeded_step(whole, batch)
    _, offloaded_grads = seeded_step(offloaded, batch)
    assert all(torch.equal(offloaded_grads[n], grads[n]) for n in grads)


def test_a_generator_writes_the_same_answers(model_dir):
    folder = model_dir("llama")
    recipe = {"template": "[P*3] <x> answer:", "head": {"type": "generation", "max_new_tokens": 6}}
    whole = prompt_model(folder, **recipe).eval()
    offloaded = prompt_model(folder, backbone=capped(folder), **recipe).eval()
    examples = whole.examples(["the movie was great", "a dull plot"])
    assert generate(offloaded, examples) == generate(whole, examples)


@pytest.mark.parametrize("group", ["all", "bias"])
def test_policies_that_would_train_offloaded_weights_are_refused(model_dir, group):
    with pytest.raises(ConfigError, match=f"trainable includes '{group}'.*offloads"):
        offloaded_model(model_dir("bert"), trainable=["prompts", group])


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"max_memory": {"cpu": "1GB"}}, "max_memory applies under a device map only"),
        ({"offload_folder": "off"}, "offload_folder applies under a device map only"),
        ({"device_map": "everywhere"}, "'everywhere' is none of auto, balanced"),
        ({"device_map": "auto", "max_memory": {"cpu": "lots"}}, r"\['cpu'\] = 'lots' is not"),
        ({"device_map": "auto", "compile": True}, "compile does not apply"),
    ],
)
def test_a_bad_device_map_section_is_refused_before_loading(section, message):
    with pytest.raises(ConfigError, match=message):
        validate(BackboneConfig, {"name": "x", **section}, "backbone")


def test_a_run_trains_predicts_and_serves_offloaded(model_dir, sentiment_data, tmp_path):
    folder = model_dir("llama")
    config = run_config(
        folder, sentiment_data, backbone=capped(folder, offload_folder=str(tmp_path / "offload"))
    )
    config["trainer"]["epochs"] = 1
    result = fit(validate_config(config))
    whole = run_config(folder, sentiment_data, output_dir=str(tmp_path / "whole"))
    whole["trainer"]["epochs"] = 1
    expected = fit(validate_config(whole))
    texts = ["the movie was great", "a dull plot"]
    loaded = promptkit.load(result.run_dir)
    assert loaded.model.backbone.dispatched
    assert torch.equal(loaded.logits(texts), expected.predictor.logits(texts))
    assert torch.equal(
        loaded.model.prompts.table, promptkit.load(expected.run_dir).model.prompts.table
    )
    scores = runner.invoke(app, ["eval", str(result.run_dir), "--data", config["data"]["test"]])
    assert json.loads(scores.stdout.splitlines()[-1]) == result.test
    host = promptkit.load({"offloaded": result.run_dir})
    with TestClient(create_app(host)) as client:  # what `promptkit serve` runs
        answer = client.post("/predict", json={"run": "offloaded", "inputs": texts})
    assert answer.json()["predictions"] == loaded.predict(texts)


def test_a_run_trained_whole_loads_onto_an_offloaded_backbone(model_dir, sentiment_data):
    folder = model_dir("llama")
    config = run_config(folder, sentiment_data)
    config["trainer"]["epochs"] = 1
    result = fit(validate_config(config))
    section = validate(BackboneConfig, capped(folder), "backbone")
    loaded = promptkit.load(result.run_dir, backbone=section.load())
    texts = ["the movie was great", "a dull plot"]
    assert torch.equal(loaded.logits(texts), result.predictor.logits(texts))


@pytest.mark.slow
def test_smollm2_with_most_layers_on_disk_trains_a_prefix_as_whole():
    folder = Path(__file__).parents[1] / ".assets" / "smollm2-135m"
    recipe = {
        "template": "[P*4] <x> It was [MASK]",
        "prompts": {"placement": "prefix"},
        "head": {"verbalizer": {"positive": [" great"], "negative": [" bad"]}},
    }
    whole = prompt_model(folder, **recipe)
    backbone = {"name": str(folder), "device_map": "auto", "max_memory": {"cpu": "150MB"}}
    offloaded = prompt_model(folder, backbone=backbone, **recipe)
    placed = list(offloaded.backbone.model.hf_device_map.values())
    assert placed.count("disk") > placed.count("cpu")
    batch = review_batch(whole)
    logits, grads = seeded_step(whole, batch)
    offloaded_logits, offloaded_grads = seeded_step(offloaded, batch)
    assert torch.equal(offloaded_logits, logits)
    assert all(torch.equal(offloaded_grads[n], grads[n]) for n in grads)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_layers_split_between_the_gpu_and_the_cpu_train_prompts_as_whole(model_dir):
    folder = model_dir("llama")
    recipe = {"head": {"verbalizer": SENTIMENT}, **PLACEMENTS["deep"]}
    backbone = {
        "name": str(folder),
        "device_map": "auto",
        "max_memory": {0: model_bytes(folder) // 2, "cpu": "4GiB"},
    }
    offloaded = prompt_model(folder, backbone=backbone, **recipe)
    assert {0, "cpu"} <= set(offloaded.backbone.model.hf_device_map.values())
    assert offloaded.device == torch.device("cuda", 0)
    whole = prompt_model(folder, **recipe).to("cuda")
    batch = {k: v.to("cuda") for k, v in review_batch(whole).items()}
    logits, grads = seeded_step(whole, batch)
    offloaded_logits, offloaded_grads = seeded_step(offloaded, batch)
    assert torch.equal(offloaded_logits, logits)
    assert all(torch.equal(offloaded_grads[n], grads[n]) for n in grads)


def test_a_device_map_under_several_processes_is_refused_before_loading(
    model_dir, sentiment_data, monkeypatch
):
    folder = model_dir("llama")
    config = validate_config(run_config(folder, sentiment_data, backbone=capped(folder)))
    monkeypatch.setattr(pipeline, "processes", lambda: SimpleNamespace(num_processes=2))
    with pytest.raises(ConfigError, match="device_map spreads one copy.*this run has 2"):
        pipeline.check_runnable(config)


def test_quantized_layers_that_would_be_offloaded_are_refused_with_the_fix(model_dir):
    folder = str(model_dir("llama"))
    nf4 = validate(BackboneConfig, {"name": "x", "quantization": {"bits": 4}}, "b").quantization
    with pytest.raises(ConfigError, match="quantized layers are not offloaded.*more room"):
        load_backbone(folder, quantization=nf4, device_map="auto", max_memory={"cpu": 20000})
