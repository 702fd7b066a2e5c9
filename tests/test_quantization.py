"""Quantized frozen backbones: prompts train through quantized layers that stay as they are."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, prompt_model, review_batch, run_config
from fastapi.testclient import TestClient

import promptkit
from promptkit.backbone.loading import load_backbone
from promptkit.backbone.quantization import stored_tensors
from promptkit.core.config import validate
from promptkit.errors import BackboneMismatchError, ConfigError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.server import create_app
from promptkit.text.config import BackboneConfig

NF4 = {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4"}
INT8 = {"method": "bitsandbytes", "bits": 8}
TORCHAO_INT8 = {"method": "torchao", "quant_type": "Int8WeightOnlyConfig"}
CPU_QUANTIZATIONS = {"nf4": NF4, "int8": INT8, "torchao-int8": TORCHAO_INT8}
PLACEMENTS = {
    "input": {"template": "<x> it was [P1][P2] [MASK]."},
    "prefix": {"template": "[P*3] <x> it was [MASK].", "prompts": {"placement": "prefix"}},
    "deep": {"template": "[P*3] <x> it was [MASK].", "prompts": {"placement": "deep"}},
}
SENTIMENT = {"positive": ["great", "good"], "negative": ["terrible", "bad"]}
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def quantized_model(folder: Path, quantization: dict, **recipe) -> torch.nn.Module:
    recipe = {"head": {"verbalizer": SENTIMENT}, **PLACEMENTS["input"], **recipe}
    backbone = {"name": str(folder), "quantization": quantization}
    return prompt_model(folder, backbone=backbone, **recipe)


def stored(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in stored_tensors(model.backbone.model)}


@pytest.mark.parametrize("quantization", CPU_QUANTIZATIONS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_prompts_train_through_quantized_layers_that_stay_unchanged(
    model_dir, placement, quantization
):
    model = quantized_model(
        model_dir("llama"), CPU_QUANTIZATIONS[quantization], **PLACEMENTS[placement]
    )
    assert model.backbone.quantization == CPU_QUANTIZATIONS[quantization]["method"]
    frozen, table = stored(model), model.prompts.table.detach().clone()
    optimizer = torch.optim.Adam(model.groups["prompts"], lr=0.1)
    batch = review_batch(model)
    for _ in range(3):
        optimizer.zero_grad()
        model(batch).logsumexp(-1).mean().backward()
        assert model.prompts.table.grad.abs().sum() > 0
        optimizer.step()
    assert not torch.equal(model.prompts.table, table)
    after = stored(model)
    assert after.keys() == frozen.keys()
    assert all(torch.equal(after[name], frozen[name]) for name in frozen)


@pytest.mark.parametrize("group", ["all", "bias"])
def test_policies_that_would_train_quantized_layers_are_refused(model_dir, group):
    with pytest.raises(ConfigError, match=f"trainable includes '{group}'.*quantized layers"):
        quantized_model(model_dir("bert"), NF4, trainable=["prompts", group])


@pytest.mark.parametrize(
    "recipe",
    [
        {"trainable": ["prompts", "norm"]},
        {"trainable": ["head"], "head": {"type": "classifier", "classes": ["a", "b"]}},
    ],
)
def test_norm_tuning_and_a_classifier_head_train_beside_quantized_layers(model_dir, recipe):
    model = quantized_model(model_dir("bert"), NF4, **recipe)
    assert model.groups.keys() == set(recipe["trainable"])
    model(review_batch(model)).sum().backward()
    assert all(p.grad.abs().sum() > 0 for group in model.groups.values() for p in group)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"method": "bitsandbytes", "bits": 8, "quant_type": "nf4"},
            "for 4-bit weights only: quant_type",
        ),
        ({"method": "bitsandbytes", "bits": 3}, "bits"),
        ({"method": "gguf", "bits": 4}, "gguf"),
        ({"method": "torchao", "bits": 4}, "bits"),
        ({"quant_type": "nf4"}, "bits"),
        ({"method": "torchao", "quant_type": "int8"}, "torchao.quantization config class"),
    ],
)
def test_a_bad_quantization_section_is_refused_before_loading(section, message):
    with pytest.raises(ConfigError, match=message):
        validate(BackboneConfig, {"name": "x", "quantization": section}, "backbone")


def test_bitsandbytes_is_the_default_method():
    assert validate_quantization({"bits": 4}).method == "bitsandbytes"


def test_quantization_options_that_do_not_fit_are_refused_at_loading(model_dir):
    folder = str(model_dir("llama"))
    unknown = {"method": "torchao", "quant_type": "NoSuchConfig"}
    with pytest.raises(ConfigError, match="torchao has no config 'NoSuchConfig'"):
        quantized_model(folder, unknown)
    wrong = {"method": "torchao", "quant_type": "Int8WeightOnlyConfig", "options": {"bits": 2}}
    with pytest.raises(ConfigError, match="options do not fit torchao's Int8WeightOnlyConfig"):
        quantized_model(folder, wrong)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
@pytest.mark.parametrize(
    ("quantization", "message"),
    [
        (
            {"method": "torchao", "quant_type": "Int4WeightOnlyConfig"},
            "Int4WeightOnlyConfig needs a GPU.*Int8WeightOnly",
        ),
        ({"bits": 4, "compute_dtype": "float16"}, "compute_dtype float16 runs on a GPU only"),
    ],
)
def test_a_gpu_only_quantization_is_refused_on_the_cpu(model_dir, quantization, message):
    with pytest.raises(ConfigError, match=message):
        quantized_model(model_dir("llama"), quantization)


def test_a_missing_package_is_named(model_dir, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install \"promptkit\[quantization\]\""):
        quantized_model(model_dir("llama"), NF4)


def test_the_quantized_backbone_takes_less_memory(model_dir):
    folder = str(model_dir("llama"))
    full = load_backbone(folder).model
    nf4 = load_backbone(folder, quantization=validate_quantization(NF4)).model
    assert nf4.get_memory_footprint() < full.get_memory_footprint()
    torchao = load_backbone(folder, quantization=validate_quantization(TORCHAO_INT8)).model

    def nbytes(model):
        return sum(t.numel() * t.element_size() for _, t in stored_tensors(model))

    assert nbytes(torchao) < nbytes(full)


def validate_quantization(section: dict):
    return validate(BackboneConfig, {"name": "x", "quantization": section}, "backbone").quantization


def test_the_fingerprint_tells_a_quantized_backbone_from_the_full_one(model_dir):
    folder = str(model_dir("llama"))
    full = load_backbone(folder).fingerprint()
    nf4 = load_backbone(folder, quantization=validate_quantization(NF4))
    assert (
        nf4.fingerprint()
        == load_backbone(folder, quantization=validate_quantization(NF4)).fingerprint()
    )
    int8 = load_backbone(folder, quantization=validate_quantization(INT8)).fingerprint()
    assert len({full, nf4.fingerprint(), int8}) == 3


def _fitted(folder, data, name: str, quantization: dict | None = NF4, **extra) -> str:
    backbone = {"name": str(folder), "quantization": quantization}
    config = run_config(folder, data, backbone=backbone, output_dir=str(data / name), **extra)
    config["trainer"]["epochs"] = 1
    return str(fit(validate_config(config)).run_dir)


def test_a_quantized_run_loads_back_quantized_with_the_same_predictions(model_dir, sentiment_data):
    folder = model_dir("llama")
    backbone = {"name": str(folder), "quantization": NF4}
    config = run_config(folder, sentiment_data, backbone=backbone)
    config["trainer"]["epochs"] = 1
    result = fit(validate_config(config))
    texts = ["the movie was great", "a dull plot"]
    loaded = promptkit.load(result.run_dir)
    assert loaded.model.backbone.quantization == "bitsandbytes"
    assert torch.equal(loaded.logits(texts), result.predictor.logits(texts))
    document = promptkit.core.run_folder.RunFolder(result.run_dir).read_recipe()
    assert document["recipe"]["backbone"]["quantization"]["quant_type"] == "nf4"


def test_a_quantized_run_is_refused_on_the_full_backbone_and_back(model_dir, sentiment_data):
    folder = model_dir("llama")
    quantized = _fitted(folder, sentiment_data, "quantized")
    with pytest.raises(BackboneMismatchError, match="quantized with bitsandbytes: the same"):
        promptkit.load(quantized, backbone=load_backbone(str(folder)))
    full = _fitted(folder, sentiment_data, "full", quantization=None)
    nf4 = load_backbone(str(folder), quantization=validate_quantization(NF4))
    with pytest.raises(BackboneMismatchError, match="fingerprint"):
        promptkit.load(full, backbone=nf4)


def test_a_config_that_asks_for_quantization_refuses_a_full_backbone(model_dir, sentiment_data):
    folder = model_dir("llama")
    backbone = {"name": str(folder), "quantization": NF4}
    config = run_config(folder, sentiment_data, backbone=backbone)
    with pytest.raises(
        BackboneMismatchError, match="quantized with nothing, but backbone.quantization asks"
    ):
        fit(validate_config(config), backbone=load_backbone(str(folder)))


def test_two_runs_share_one_quantized_backbone_in_a_host(model_dir, sentiment_data):
    folder = model_dir("llama")
    plain = _fitted(folder, sentiment_data, "plain")
    prefix = _fitted(folder, sentiment_data, "prefix", **PLACEMENTS["prefix"])
    host = promptkit.load([plain, prefix])
    assert host.backbone.quantization == "bitsandbytes"
    assert host.models["plain"].backbone is host.models["prefix"].backbone
    texts = ["the movie was great", "a dull plot"]
    alone = [
        promptkit.load(plain).predict(texts[:1])[0],
        promptkit.load(prefix).predict(texts[1:])[0],
    ]
    assert host.predict([("plain", texts[0]), ("prefix", texts[1])]) == alone
    with TestClient(create_app(host)) as client:  # what `promptkit serve` runs
        answer = client.post("/predict", json={"run": "prefix", "inputs": texts[1:]})
    assert answer.json()["predictions"] == alone[1:]


def test_a_checkpoint_quantized_already_loads_as_it_is(model_dir, tmp_path):
    source = str(model_dir("llama"))
    saved = tmp_path / "nf4"
    quantized = load_backbone(source, quantization=validate_quantization(NF4))
    quantized.model.save_pretrained(saved)
    make_tokenizer(masked=False).save_pretrained(saved)
    backbone = load_backbone(str(saved))
    assert backbone.quantization == "bitsandbytes"
    assert backbone.fingerprint() == quantized.fingerprint()
    with pytest.raises(ConfigError, match="quantized already"):
        load_backbone(str(saved), quantization=validate_quantization(NF4))
    model = prompt_model(saved, head={"verbalizer": SENTIMENT}, **PLACEMENTS["input"])
    model(review_batch(model)).sum().backward()
    assert model.prompts.table.grad.abs().sum() > 0


@gpu_only
def test_torchao_int4_weights_train_prompts_on_a_gpu(model_dir):
    int4 = {
        "method": "torchao",
        "quant_type": "Int4WeightOnlyConfig",
        "options": {"group_size": 32},
    }
    model = quantized_model(model_dir("llama"), int4).to("cuda")
    batch = {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in review_batch(model).items()}
    model(batch).sum().backward()
    assert model.prompts.table.grad.abs().sum() > 0


@pytest.mark.slow
def test_smollm2_in_4_bits_is_smaller_and_trains_a_prompt():
    folder = Path(__file__).parents[1] / ".assets" / "smollm2-135m"
    full = load_backbone(str(folder)).model.get_memory_footprint()
    model = quantized_model(
        folder,
        NF4,
        template="<x> it was [P*4] [MASK]",
        head={"verbalizer": {"positive": [" great"], "negative": [" bad"]}},
    )
    assert model.backbone.model.get_memory_footprint() < full / 2
    frozen = stored(model)
    model(review_batch(model)).logsumexp(-1).mean().backward()
    assert model.prompts.table.grad.abs().sum() > 0
    assert all(torch.equal(t, frozen[n]) for n, t in stored(model).items())
