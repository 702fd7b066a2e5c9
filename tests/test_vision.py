"""Visual Prompt Tuning on timm and transformers ViTs."""

import gzip
import json

import numpy as np
import pytest
import timm
import torch
import yaml
from typer.testing import CliRunner
from vision_helpers import TIMM_MODELS, save_hf_vit, vision_config, write_images

from promptkit.backbone.layers import select_layers
from promptkit.cli import app
from promptkit.core.soft_prompts import SoftPrompts
from promptkit.errors import ConfigError, DataError, PromptkitError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run
from promptkit.vision.config import ImageDataConfig, VisionModelConfig
from promptkit.vision.data import read_image_rows, to_rgb
from promptkit.vision.model import VisionPromptModel, build_vision_model


def recipe(name: str, kwargs: dict | None = None, **extra) -> VisionModelConfig:
    data = {"modality": "vision", "backbone": {"name": name, "kwargs": kwargs or {}}, **extra}
    return VisionModelConfig.model_validate(data)


def timm_recipe(kind: str = "vit", **extra) -> VisionModelConfig:
    name, kwargs = TIMM_MODELS[kind]
    return recipe(name, kwargs, **extra)


def pixels(n: int = 2, size: int = 16) -> dict:
    return {
        "pixel_values": torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    }


def capture_block_inputs(model) -> list[torch.Tensor]:
    seen = []
    for block in model.adapter.blocks:  # registered after the placement's hooks: sees their work
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    return seen


@pytest.mark.parametrize("kind", list(TIMM_MODELS))
def test_zero_prompts_equal_the_stock_timm_model(kind):
    name, kwargs = TIMM_MODELS[kind]
    pool = kwargs.get("global_pool", "token")
    no_prompts = timm_recipe(kind, vpt={"tokens": 0}, trainable=["head"], head={"pool": pool})
    model = build_vision_model(no_prompts, ["a", "b"]).eval()
    stock = timm.create_model(name, **kwargs).eval()
    stock.reset_classifier(2, pool)
    stock.load_state_dict(model.vit.state_dict())
    batch = pixels()
    torch.testing.assert_close(model(batch), stock(batch["pixel_values"]))


def test_zero_prompts_equal_the_stock_transformers_model(tmp_path):
    folder = save_hf_vit(tmp_path / "hf-vit")
    model = build_vision_model(
        recipe(str(folder), vpt={"tokens": 0}, trainable=["head"]), ["a", "b"]
    ).eval()
    from transformers import ViTForImageClassification

    stock = ViTForImageClassification.from_pretrained(folder).eval()
    stock.classifier = torch.nn.Linear(32, 2)
    stock.load_state_dict(model.vit.state_dict())
    batch = pixels()
    torch.testing.assert_close(model(batch), stock(**batch).logits)


@pytest.mark.parametrize("kind", list(TIMM_MODELS))
def test_prompts_sit_after_the_prefix_tokens_and_leave_before_pooling(kind):
    model = build_vision_model(timm_recipe(kind, vpt={"tokens": 5, "dropout": 0.0}), ["a", "b"])
    model.eval()
    n_prefix, n_patches = model.adapter.n_prefix, 16
    seen = capture_block_inputs(model)
    pooled_input = []
    model.vit.norm.register_forward_hook(lambda _m, _a, out: pooled_input.append(out))
    logits = model(pixels(3))
    assert logits.shape == (3, 2)
    assert [s.shape[1] for s in seen] == [n_prefix + 5 + n_patches] * 3
    torch.testing.assert_close(seen[0][0, n_prefix : n_prefix + 5], model.prompts.table.detach())
    assert pooled_input[0].shape[1] == n_prefix + n_patches
    torch.testing.assert_close(model.vit.forward_head(pooled_input[0]), logits)


def test_deep_prompts_differ_per_layer_and_replace_the_previous_ones():
    model = build_vision_model(
        timm_recipe(vpt={"tokens": 4, "deep": True, "dropout": 0.0}), ["a", "b"]
    ).eval()
    seen = capture_block_inputs(model)
    model(pixels())
    table = model.prompts.table.detach().view(3, 4, -1)
    assert not torch.allclose(table[0], table[1])
    for layer, hidden in enumerate(seen):
        assert hidden.shape[1] == 1 + 4 + 16  # replaced, not accumulated
        torch.testing.assert_close(hidden[0, 1:5], table[layer])


def test_shallow_prompts_enter_once_and_flow_through():
    model = build_vision_model(timm_recipe(vpt={"tokens": 4, "dropout": 0.0}), ["a", "b"]).eval()
    seen = capture_block_inputs(model)
    model(pixels())
    torch.testing.assert_close(seen[0][0, 1:5], model.prompts.table.detach())
    assert not torch.allclose(seen[1][0, 1:5], model.prompts.table.detach())


def test_layer_selection_prompts_only_the_selected_blocks():
    model = build_vision_model(
        timm_recipe(vpt={"tokens": 4, "deep": True, "layers": "last:2", "dropout": 0.0}), ["a", "b"]
    ).eval()
    seen = capture_block_inputs(model)
    model(pixels())
    assert [s.shape[1] for s in seen] == [17, 21, 21]
    table = model.prompts.table.detach().view(2, 4, -1)
    torch.testing.assert_close(seen[2][0, 1:5], table[1])


def test_vpt_models_sharing_a_backbone_each_use_their_own_prompts():
    first = build_vision_model(timm_recipe(vpt={"tokens": 3, "dropout": 0.0}), ["a", "b"]).eval()
    second = VisionPromptModel(
        first.adapter,
        SoftPrompts(3, first.adapter.dim),
        first.layers,
        3,
        ["a", "b"],
        ["prompts", "head"],
    ).eval()
    torch.nn.init.normal_(second.prompts.table)
    batch = pixels()
    alone = first(batch)
    other = second(batch)
    assert (alone - other).abs().max() > 1e-4
    torch.testing.assert_close(first(batch), alone)
    first.placement.release()
    torch.testing.assert_close(second(batch), other)
    with pytest.raises(PromptkitError, match="released"):
        first(batch)


def test_hf_prompts_and_avg_pooling(tmp_path):
    folder = save_hf_vit(tmp_path / "hf-vit")
    model = build_vision_model(
        recipe(str(folder), vpt={"tokens": 3, "deep": True}, head={"pool": "avg"}), ["a", "b", "c"]
    ).eval()
    seen = capture_block_inputs(model)
    hidden = []
    model.vit.vit.layernorm.register_forward_hook(lambda _m, _a, out: hidden.append(out))
    logits = model(pixels())
    assert [s.shape[1] for s in seen] == [1 + 3 + 16] * 3
    assert hidden[0].shape[1] == 17
    torch.testing.assert_close(logits, model.vit.classifier(hidden[0][:, 1:].mean(1)))


def test_only_prompts_and_head_get_gradients():
    model = build_vision_model(timm_recipe(vpt={"tokens": 4, "deep": True}), ["a", "b"])
    model(pixels()).sum().backward()
    for name, p in model.named_parameters():
        trains = name.startswith(("prompts.", "vit.head."))
        assert p.requires_grad == trains, name
        assert (p.grad is not None) == trains, name


def test_policies_for_the_baselines():
    probe = build_vision_model(timm_recipe(vpt={"tokens": 0}, trainable=["head"]), ["a", "b"])
    assert set(probe.groups) == {"head"}
    full = build_vision_model(timm_recipe(vpt={"tokens": 0}, trainable=["head", "all"]), ["a"])
    head = {id(p) for p in full.groups["head"]}
    assert all(id(p) not in head for p in full.groups["all"])
    assert full.n_trainable() == sum(p.numel() for p in full.vit.parameters())
    with pytest.raises(Exception, match="must train"):
        timm_recipe(trainable=["prompts"])


def test_select_layers():
    assert select_layers("all", 4) == [0, 1, 2, 3]
    assert select_layers("first:2", 4) == [0, 1]
    assert select_layers("last:1", 4) == [3]
    assert select_layers("1-2", 4) == [1, 2]
    for bad in ("last:9", "3-1", "middle", "0-4"):
        with pytest.raises(ConfigError):
            select_layers(bad, 4)


def test_a_backbone_vpt_cannot_serve_is_a_clear_error():
    with pytest.raises(ConfigError, match="not a timm VisionTransformer"):
        build_vision_model(recipe("resnet10t"), ["a", "b"])


def test_image_sources(tmp_path):
    folder = write_images(tmp_path / "imgs", per_class=2, grey=True)
    rows = read_image_rows(ImageDataConfig(source="image_folder"), str(folder))
    assert [r["label"] for r in rows] == ["bright", "bright", "dark", "dark"]
    assert to_rgb(rows[0]["image"]).mode == "RGB"

    idx = tmp_path / "idx"
    idx.mkdir()
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    with gzip.open(idx / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0" * 16 + images.tobytes())
    with gzip.open(idx / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\0" * 8 + bytes([0, 9, 5]))
    fashion = read_image_rows(ImageDataConfig(source="fashion_mnist", path=str(idx)), "test")
    assert [r["label"] for r in fashion] == ["t-shirt", "ankle-boot", "sandal"]
    assert np.array_equal(fashion[1]["image"], images[1])
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        read_image_rows(ImageDataConfig(source="fashion_mnist", path=str(tmp_path)), "train")

    digits = read_image_rows(ImageDataConfig(source="digits"), "test")
    assert len(digits) == 360 and digits[0]["image"].shape == (8, 8)
    assert to_rgb(digits[0]["image"]).size == (8, 8)

    hub = read_image_rows(ImageDataConfig(source="dataset", dataset=str(folder)), "train")
    assert len(hub) == 4 and to_rgb(hub[0]["image"]).mode == "RGB"


def test_fit_save_load_same_predictions(tmp_path):
    train = write_images(tmp_path / "train", per_class=12)
    test = write_images(tmp_path / "test", per_class=6, seed=1)
    config = validate_config(vision_config(train, test, tmp_path / "run"))
    result = fit(config)
    assert result.test["accuracy"] >= 0.9
    predictor = load_run(result.run_dir)
    files = sorted(str(p) for p in test.rglob("*.png"))
    torch.testing.assert_close(predictor.logits(files), result.predictor.logits(files))
    saved = json.loads((result.run_dir / "promptkit.json").read_text())
    assert saved["trained_parameters"] == 3 * 4 * 32 + 32 * 2 + 2


def test_presets_from_the_catalog(tmp_path):
    train = write_images(tmp_path / "train", per_class=2)
    config = validate_config(
        {**vision_config(train, None, tmp_path / "run"), "preset": "vpt_deep", "vpt": {"tokens": 3}}
    )
    assert config.vpt.deep and config.vpt.tokens == 3
    assert config.trainer.learning_rate("prompts") == 0.05
    bitfit = validate_config(
        {**vision_config(train, None, tmp_path / "run", trainer={}), "preset": "bitfit"}
    )
    assert bitfit.trainable == ["bias", "head"]
    with pytest.raises(ConfigError, match="vision catalog has no entry 'vpt_medium'"):
        validate_config({**vision_config(train, None, tmp_path), "preset": "vpt_medium"})


def test_cli_fit_and_predict_on_image_files(tmp_path):
    train = write_images(tmp_path / "train", per_class=8)
    config = tmp_path / "vpt.yaml"
    config.write_text(yaml.safe_dump(vision_config(train, None, tmp_path / "run")))
    runner = CliRunner()
    fitted = runner.invoke(app, ["fit", str(config), "--set", "trainer.epochs=1"])
    assert fitted.exit_code == 0, fitted.output
    out = tmp_path / "predictions.jsonl"
    new = write_images(tmp_path / "new", per_class=2, seed=3)
    predicted = runner.invoke(
        app, ["predict", str(tmp_path / "run"), "--input", str(new), "--output", str(out)]
    )
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["image"].endswith(".png")
    assert rows[0]["prediction"] in {"bright", "dark"}
    command = ["predict", str(tmp_path / "run"), "--input", rows[0]["image"], "--output", str(out)]
    refused = runner.invoke(app, command)
    assert refused.exit_code == 2 and "exists" in refused.output
    single = runner.invoke(app, [*command, "--overwrite"])
    assert single.exit_code == 0 and len(out.read_text().splitlines()) == 1
    evaluated = runner.invoke(app, ["eval", str(tmp_path / "run"), "--data", str(new)])
    assert evaluated.exit_code == 0, evaluated.output
    assert 0 <= json.loads(evaluated.stdout.splitlines()[-1])["accuracy"] <= 1


def test_timm_local_checkpoint_file(tmp_path):
    from safetensors.torch import save_file

    name, kwargs = TIMM_MODELS["vit"]
    source = timm.create_model(name, **kwargs)
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    backbone = {"name": name, "kwargs": kwargs, "checkpoint": str(tmp_path / "vit.safetensors")}
    model = build_vision_model(
        VisionModelConfig.model_validate({"modality": "vision", "backbone": backbone}), ["a", "b"]
    )
    torch.testing.assert_close(model.vit.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    missing = {"modality": "vision", "backbone": {"name": name, "checkpoint": "nope.pt"}}
    with pytest.raises(ConfigError, match="nope.pt: no such file"):
        build_vision_model(VisionModelConfig.model_validate(missing), ["a"])


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        config = timm_recipe(vpt={"tokens": 4, "deep": True, "dropout": 0.0})
        model = build_vision_model(config, ["a", "b"]).train()
        model.vit.set_grad_checkpointing(checkpointing)
        model(pixels()).sum().backward()
        grads.append(model.prompts.table.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize(
    "vpt, trainable",
    [
        ({"tokens": 4, "deep": True, "layers": "last:2", "dropout": 0.0}, ["prompts", "head"]),
        ({"tokens": 4, "deep": True, "dropout": 0.0}, ["prompts", "head"]),
        ({"tokens": 0}, ["head"]),
    ],
)
def test_blocks_below_the_first_prompted_one_run_without_autograd(vpt, trainable, checkpointing):
    """VPT-deep on the last blocks: the blocks below see no trainable input and run without
    autograd; logits and gradients are the same as with every block on the tape, with and
    without activation checkpointing."""
    results = []
    for skip in (True, False):
        torch.manual_seed(0)
        model = build_vision_model(timm_recipe(vpt=vpt, trainable=trainable), ["a", "b"]).eval()
        if checkpointing:
            model.enable_checkpointing()
        if not skip:
            model.placement.blocks = []  # no block counts as frozen: every block records
        grad_modes = []
        for block in model.adapter.blocks:
            block.register_forward_pre_hook(
                lambda *_, seen=grad_modes: seen.append(torch.is_grad_enabled())
            )
        logits = model(pixels())
        forward_modes = list(grad_modes)
        logits.sum().backward()  # under checkpointing, blocks that recorded run again
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads, forward_modes, grad_modes[len(forward_modes) :]))
    (on, on_grads, modes, recomputed), (off, off_grads, all_on, _) = results
    torch.testing.assert_close(on, off)
    assert on_grads.keys() == off_grads.keys() and on_grads
    for name in on_grads:
        torch.testing.assert_close(on_grads[name], off_grads[name])
    expected = {"last:2": [False, True, True], "all": [True] * 3}.get(vpt.get("layers", "all"))
    assert modes == (expected if vpt["tokens"] else [False] * 3) and all(all_on)
    assert recomputed == ([True] * sum(modes) if checkpointing else [])
