"""Config validation: unknown keys name themselves, overrides, catalogs."""

import pytest
import yaml

from promptkit import catalog
from promptkit.errors import ConfigError
from promptkit.runs.config import load_config, validate_config
from promptkit.text.model import check_recipe

BASE = {
    "backbone": {"name": "some/model"},
    "template": "<x> [MASK]",
    "data": {"train": "t.jsonl"},
    "head": {"verbalizer": "sentiment"},
}


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, "trainer": {"epoch": 3}}, "run.yaml")
    message = str(info.value)
    assert (
        "run.yaml" in message and "trainer.epoch: unknown key (did you mean 'epochs'?)" in message
    )


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="templte: unknown key \\(did you mean 'template'\\?\\)"):
        validate_config({**BASE, "templte": "x"})


def test_bad_value_and_missing_key():
    with pytest.raises(ConfigError, match="trainer.epochs: .*got -1"):
        validate_config({**BASE, "trainer": {"epochs": -1}})
    with pytest.raises(ConfigError, match="backbone: required, but missing"):
        validate_config({k: v for k, v in BASE.items() if k != "backbone"})
    with pytest.raises(ConfigError, match="trainable.0"):
        validate_config({**BASE, "trainable": ["prompt"]})


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(path, ["trainer.epochs=7", "trainer.lr.bias=0.5", "trainable=[bias]"])
    assert cfg.trainer.epochs == 7 and cfg.trainer.learning_rate("bias") == 0.5
    assert cfg.trainer.learning_rate("head") == 1e-3
    assert cfg.trainable == ["bias"]
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        load_config(path, ["trainer.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_catalog_names_resolve():
    cfg = validate_config({**BASE, "template": "null_prompt", "trainable": ["bias"]})
    checked = check_recipe(cfg.recipe())
    assert checked.template.source == "<x> [MASK]"
    assert checked.recipe.head.words().words == {
        "positive": ["great", "good"],
        "negative": ["terrible", "bad"],
    }


def test_catalog_entries_all_compile():
    from promptkit.text.label_words import Verbalizer
    from promptkit.text.template import Template

    templates = catalog.entries("templates")
    assert {"null_prompt", "prompt_tuning", "sentiment_ptuning"} <= set(templates)
    for entry in templates.values():
        assert entry["description"]
        Template(entry["template"])
    for entry in catalog.entries("verbalizers").values():
        Verbalizer(entry["words"])


def test_unknown_catalog_names():
    with pytest.raises(ConfigError, match="neither a catalog name"):
        check_recipe(validate_config({**BASE, "head": {"verbalizer": "sentimnt"}}).recipe())
    with pytest.raises(Exception, match="No catalog template is named 'sentimnt'"):
        check_recipe(validate_config({**BASE, "template": "sentimnt"}).recipe())


def test_inputs_must_name_template_slots():
    with pytest.raises(ConfigError, match="no such input slot"):
        check_recipe(validate_config({**BASE, "inputs": {"y": "text"}}).recipe())


def test_verbalizer_from_yaml_file(tmp_path):
    path = tmp_path / "words.yaml"
    path.write_text("agree: [good]\ndisagree: [bad]\n")
    config = {**BASE, "head": {"verbalizer": str(path)}, "trainable": []}
    checked = check_recipe(validate_config(config).recipe())
    assert checked.classes == ["agree", "disagree"]
