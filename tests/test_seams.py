"""The seams: placements and heads as registered classes with their own config sections,
the declared task kind, the modality registry."""

import pytest
from conftest import run_config

from promptkit.errors import ConfigError
from promptkit.modalities import modality_of
from promptkit.runs.config import validate_config
from promptkit.tasks import CLASSIFICATION, TAGGING
from promptkit.text.heads import HEADS
from promptkit.text.model import build_model, check_recipe
from promptkit.text.placements import PLACEMENTS

BASE = {
    "backbone": {"name": "some/model"},
    "template": "[P*2] <x> [MASK]",
    "data": {"train": "t.jsonl"},
    "head": {"verbalizer": "sentiment"},
}


def test_each_placement_and_head_owns_its_section():
    prefix = validate_config({**BASE, "prompts": {"placement": "prefix", "layers": "last:2"}})
    assert type(prefix.prompts) is PLACEMENTS["prefix"].config
    with pytest.raises(ConfigError, match=r"prompts.layers: unknown key.*placement, init"):
        validate_config({**BASE, "prompts": {"placement": "input", "layers": "all"}})
    with pytest.raises(ConfigError, match=r"head.pool: unknown key.*type, multi_label, verbalizer"):
        validate_config({**BASE, "head": {"verbalizer": "sentiment", "pool": "cls"}})
    with pytest.raises(ConfigError, match=r"prompts: unknown 'side'; choose one of .*'deep'"):
        validate_config({**BASE, "prompts": {"placement": "side"}})
    with pytest.raises(ConfigError, match="prompts.layers: .*write all, first:K"):
        validate_config({**BASE, "prompts": {"placement": "deep", "layers": "top"}})
    classifier = validate_config({**BASE, "head": {"type": "classifier", "pool": "mean"}})
    assert type(classifier.head) is HEADS["classifier"].config


def test_a_preset_section_of_another_placement_is_replaced_not_merged():
    """ptuning_v2 names a prefix with layers and dropout; a config that asks for input
    prompts gets the input section it wrote, not a mix that input placement rejects."""
    config = validate_config({**BASE, "preset": "ptuning_v2", "prompts": {"placement": "input"}})
    assert config.prompts.placement == "input" and config.prompts.dropout == 0.0
    same = validate_config({**BASE, "preset": "ptuning_v2", "prompts": {"layers": "last:1"}})
    assert same.prompts.placement == "prefix" and same.prompts.dropout == 0.1


def test_the_task_is_declared_by_the_head(model_dir):
    recipe = validate_config({**BASE, "head": {"type": "token"}}).recipe()
    assert check_recipe(recipe).task is TAGGING
    assert check_recipe(validate_config(BASE).recipe()).task is CLASSIFICATION
    model = build_model(
        validate_config(
            {**BASE, "backbone": {"name": str(model_dir("bert"))}, "head": {"type": "token"}}
        ).recipe(),
        classes=["O", "B-x"],
    )
    assert model.task is TAGGING and model.head.task is TAGGING


def test_head_checks_come_before_loading(model_dir, sentiment_data):
    config = run_config(
        model_dir("bert"),
        sentiment_data,
        template="<x>",
        head={"type": "classifier", "pool": "mask"},
    )
    with pytest.raises(Exception, match=r"has no \[MASK\], but `head.pool: mask` reads it"):
        check_recipe(validate_config(config).recipe())


def test_modalities_are_looked_up_by_name():
    assert modality_of({}).name == "text"
    assert modality_of({"modality": "vision"}).presets == "vision"
    with pytest.raises(ConfigError, match="modality 'audio' is unknown; choose one of text"):
        modality_of({"modality": "audio"})
    with pytest.raises(ConfigError, match="a config is a mapping of keys to values, not a list"):
        validate_config([1, 2])


def test_every_registry_names_its_plugins_and_refuses_an_unknown_one():
    from promptkit.backbone.quantization import QUANTIZATIONS
    from promptkit.modalities import MODALITIES
    from promptkit.tasks import TASKS

    for registry, known in [
        (PLACEMENTS, "prefix"),
        (HEADS, "classifier"),
        (TASKS, "tagging"),
        (MODALITIES, "vision"),
        (QUANTIZATIONS, "torchao"),
    ]:
        assert registry[known] is dict(registry)[known]
        assert registry.described()[known]
        with pytest.raises(ConfigError, match=f"there is no {registry.kind} 'nope'.*{known}"):
            registry["nope"]


def test_the_cli_lists_the_registries():
    from typer.testing import CliRunner

    from promptkit.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["list", "placements"])
    assert listed.exit_code == 0
    assert all(name in listed.stdout for name in PLACEMENTS)
    assert "heads" not in listed.stdout
    everything = runner.invoke(app, ["list"]).stdout
    assert all(name in everything for name in ("token", "multi_label", "bitsandbytes"))
    unknown = runner.invoke(app, ["list", "widgets"])
    assert unknown.exit_code == 2 and "no list 'widgets'" in unknown.stderr
