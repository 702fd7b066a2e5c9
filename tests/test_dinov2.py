"""Visual Prompt Tuning on transformers' DINOv2 (with and without register tokens), on tiny
models built from a config."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    BertConfig,
    BertModel,
    Dinov2Model,
)
from vision_helpers import TIMM_MODELS, save_dinov2, save_hf_vit, vision_config, write_images

from promptkit.errors import ConfigError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run
from promptkit.vision.config import VisionModelConfig
from promptkit.vision.model import build_vision_model

PATCHES = 16  # a 16 px image in 4 px patches


def recipe(folder, **extra) -> VisionModelConfig:
    data = {"modality": "vision", "backbone": {"name": str(folder)}, **extra}
    return VisionModelConfig.model_validate(data)


def pixels(n: int = 2, size: int = 16) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(n, 3, size, size, generator=generator)}


def block_inputs(model) -> list[torch.Tensor]:
    seen = []
    for block in model.adapter.blocks:
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    return seen


@pytest.fixture(params=[0, 2], ids=["dinov2", "dinov2-registers"])
def folder(request, tmp_path):
    return save_dinov2(tmp_path / "dinov2", registers=request.param)


@pytest.mark.parametrize("size", [16, 24])
def test_zero_prompts_give_the_stock_classifier_exactly(folder, size):
    model = build_vision_model(
        recipe(folder, vpt={"tokens": 0}, trainable=["head"], head={"pool": "token+avg"}),
        ["a", "b"],
    ).eval()
    stock = AutoModelForImageClassification.from_pretrained(folder, num_labels=2).eval()
    stock.load_state_dict(model.vit.state_dict())
    batch = pixels(size=size)  # 24 px: the model's own position-grid interpolation
    assert torch.equal(model(batch), stock(**batch).logits)


def test_class_token_pooling_reads_the_stock_pooler_output(tmp_path):
    folder = save_dinov2(tmp_path / "dinov2")
    model = build_vision_model(
        recipe(folder, vpt={"tokens": 0}, trainable=["head"]), ["a", "b", "c"]
    ).eval()
    stock = Dinov2Model.from_pretrained(folder).eval()
    batch = pixels()
    expected = model.vit.classifier(stock(**batch).pooler_output)
    assert torch.equal(model(batch), expected)


@pytest.mark.parametrize("pool", ["token", "avg", "token+avg"])
def test_prompts_follow_the_prefix_tokens_and_never_reach_pooling(folder, pool):
    model = build_vision_model(
        recipe(folder, vpt={"tokens": 5, "deep": True, "dropout": 0.0}, head={"pool": pool}),
        ["a", "b"],
    ).eval()
    n_prefix = 1 + getattr(model.vit.config, "num_register_tokens", 0)
    assert model.adapter.n_prefix == n_prefix
    seen = block_inputs(model)
    normed = []
    model.adapter.final_norm.register_forward_hook(lambda _m, _a, out: normed.append(out))
    logits = model(pixels(3))
    table = model.prompts.table.detach().view(3, 5, -1)
    for layer, hidden in enumerate(seen):
        assert hidden.shape[1] == n_prefix + 5 + PATCHES  # replaced, not accumulated
        torch.testing.assert_close(hidden[0, n_prefix : n_prefix + 5], table[layer])
    hidden = normed[0]
    assert hidden.shape[1] == n_prefix + PATCHES
    token, patches = hidden[:, 0], hidden[:, n_prefix:].mean(1)
    features = {"token": token, "avg": patches, "token+avg": torch.cat([token, patches], 1)}
    torch.testing.assert_close(logits, model.vit.classifier(features[pool]))


def test_shallow_prompts_enter_once_after_the_registers(tmp_path):
    folder = save_dinov2(tmp_path / "dinov2", registers=2)
    model = build_vision_model(recipe(folder, vpt={"tokens": 4, "dropout": 0.0}), ["a"]).eval()
    seen = block_inputs(model)
    model(pixels())
    registers = model.vit.base_model.embeddings.register_tokens[0].detach()
    torch.testing.assert_close(seen[0][0, 1:3], registers)  # class token, registers, prompts
    torch.testing.assert_close(seen[0][0, 3:7], model.prompts.table.detach())
    assert not torch.allclose(seen[1][0, 3:7], model.prompts.table.detach())  # flowed on


def trains(name: str, trained: set[str]) -> bool:
    if name.startswith("prompts."):
        return "prompts" in trained
    return (
        "everything" in trained
        or ("classifier" in trained and name.startswith("vit.classifier."))
        or ("bias" in trained and name.endswith("bias"))
    )


@pytest.mark.parametrize(
    ("trainable", "trained"),
    [
        (["prompts", "head"], {"prompts", "classifier"}),
        (["head"], {"classifier"}),
        (["bias", "head"], {"classifier", "bias"}),
        (["all", "head"], {"everything"}),
    ],
    ids=["vpt", "linear-probe", "bitfit", "full"],
)
def test_policies_train_their_parameters_and_leave_layer_scale_alone(folder, trainable, trained):
    tokens = 4 if "prompts" in trainable else 0
    model = build_vision_model(
        recipe(folder, vpt={"tokens": tokens, "deep": True}, trainable=trainable), ["a", "b"]
    )
    scales = {n: p.detach().clone() for n, p in model.named_parameters() if "lambda1" in n}
    optimizer = torch.optim.SGD([p for g in model.groups.values() for p in g], lr=0.1)
    model(pixels()).logsumexp(-1).sum().backward()
    optimizer.step()
    for name, p in model.named_parameters():
        assert p.requires_grad == trains(name, trained), name
    for name, before in scales.items():
        after = dict(model.named_parameters())[name]
        assert torch.equal(after, before) != ("everything" in trained), name


def test_image_size_and_fit_shape_the_transform(tmp_path):
    folder = save_dinov2(tmp_path / "dinov2")
    wide = Image.fromarray(np.full((20, 40, 3), 255, np.uint8))
    letterbox = build_vision_model(
        recipe(folder, image={"size": 28, "fit": "letterbox"}), ["a"]
    ).transform(wide)
    assert letterbox.shape == (3, 28, 28)
    assert letterbox[:, 14].min() > 2.0 and letterbox[:, 0].abs().max() < 0.05  # mean padding
    crop = build_vision_model(recipe(folder, image={"size": 28}), ["a"]).transform(wide)
    assert crop.shape == (3, 28, 28) and crop.min() > 2.0  # cut to the white centre
    assert build_vision_model(recipe(folder), ["a"]).transform(wide).shape == (3, 224, 224)


def test_sizes_and_pools_a_family_cannot_serve_are_clear_errors(tmp_path):
    name, kwargs = TIMM_MODELS["vit"]
    timm_recipe = {"modality": "vision", "backbone": {"name": name, "kwargs": kwargs}}
    with pytest.raises(ConfigError, match="takes 16x16 images only"):
        build_vision_model(
            VisionModelConfig.model_validate({**timm_recipe, "image": {"size": 32}}), ["a"]
        )
    with pytest.raises(ConfigError, match="timm ViT pools token or avg"):
        build_vision_model(
            VisionModelConfig.model_validate({**timm_recipe, "head": {"pool": "token+avg"}}),
            ["a"],
        )
    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertModel(bert).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="'bert' model; VPT serves the model types dinov2"):
        build_vision_model(recipe(tmp_path / "bert"), ["a"])


def test_a_transformers_vit_takes_another_size(tmp_path):
    folder = save_hf_vit(tmp_path / "vit")
    model = build_vision_model(
        recipe(folder, vpt={"tokens": 2}, image={"size": 24}, head={"pool": "token+avg"}), ["a"]
    ).eval()
    assert model.transform(np.zeros((30, 30), np.uint8)).shape == (3, 24, 24)
    assert model(pixels(size=24)).shape == (2, 1)


def test_fit_save_load_on_dinov2_with_registers(tmp_path):
    folder = save_dinov2(tmp_path / "dinov2", registers=2)
    train = write_images(tmp_path / "train", per_class=12)
    test = write_images(tmp_path / "test", per_class=6, seed=1)
    config = vision_config(
        train,
        test,
        tmp_path / "run",
        backbone={"name": str(folder)},
        image={"size": 20, "fit": "squash"},
        head={"pool": "token+avg"},
    )
    result = fit(validate_config(config))
    assert result.test["accuracy"] >= 0.9
    files = sorted(str(p) for p in test.rglob("*.png"))
    torch.testing.assert_close(
        load_run(result.run_dir).logits(files), result.predictor.logits(files)
    )
