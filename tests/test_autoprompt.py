"""AutoPrompt: trigger words found by gradient-guided search, written as a hard template."""

from __future__ import annotations

import pytest
import torch
from conftest import sentiment_rows

from promptkit.errors import ConfigError, DataError
from promptkit.text.autoprompt import autoprompt
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model
from promptkit.text.template import Template

WORDS = {"positive": ["great", "good"], "negative": ["terrible", "bad"]}


def model_with(model_dir, template: str, **prompts):
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(model_dir("gpt2"))},
            "template": template,
            "head": {"verbalizer": WORDS},
            "prompts": {"placement": "input", **prompts},
            "trainable": [],
        }
    )
    return build_model(recipe)


def data(model, n=16):
    rows = sentiment_rows(n)
    return model.examples([r["text"] for r in rows]), [1 - r["label"] for r in rows]


def test_the_found_template_scores_what_the_search_found(model_dir):
    model = model_with(model_dir, "<x> it was [P1][P2] [MASK].")
    examples, labels = data(model)
    found = autoprompt(model, examples, labels, iterations=6, candidates=8, batch_size=16)
    assert len(found.words) == 2 and len(found.losses) == 6
    assert all(b <= a + 1e-5 for a, b in zip(found.losses, found.losses[1:], strict=False))
    hard = Template(found.template)
    assert not hard.n_slots and hard.has_mask
    assert found.template == f"<x> it was {found.words[0]} {found.words[1]} [MASK]."
    assert [s.init for s in Template(found.seeded).slots] == found.words
    plain = model_with(model_dir, found.template).eval()
    batch = plain.collate(plain.encode(examples), labels)
    with torch.no_grad():
        loss = float(plain.task.loss(plain(batch), batch["labels"]))
    assert loss == pytest.approx(found.losses[-1], abs=1e-4)


def test_what_autoprompt_searches_is_checked(model_dir):
    examples, labels = data(model_with(model_dir, "<x> [P1] [MASK]."))
    with pytest.raises(ConfigError, match="put trigger slots in it"):
        autoprompt(model_with(model_dir, "<x> it was [MASK]."), examples, labels)
    with pytest.raises(ConfigError, match="triggers are input words"):
        autoprompt(model_with(model_dir, "<x> [P1] [MASK].", encoder="mlp"), examples, labels)
    with pytest.raises(DataError, match="two or more classes"):
        autoprompt(model_with(model_dir, "<x> [P1] [MASK]."), examples, [0] * len(examples))


def test_the_command_prints_both_templates(model_dir, sentiment_data, tmp_path, monkeypatch):
    import yaml
    from conftest import run_config
    from typer.testing import CliRunner

    from promptkit.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(model_dir("gpt2"), sentiment_data)))
    result = CliRunner().invoke(app, ["template", "autoprompt", str(path), "--iterations", "2"])
    assert result.exit_code == 0, result.output
    assert "hard template:   <x> it was" in result.output and "[P1:" in result.output
    bad = CliRunner().invoke(
        app, ["template", "autoprompt", str(path), "--set", "template=<x> [MASK]."]
    )
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["prompts.placement=prefix"], "triggers are input words"),
        (["prompts.encoder=mlp"], "triggers are input words"),
        (['template="{{ x }} [P1] [MASK]"', "inputs={}"], "put trigger slots in it"),
        (["head.multi_label=true"], "a classifier's labels"),
    ],
)
def test_the_command_checks_the_config_before_loading(sentiment_data, tmp_path, settings, message):
    import yaml
    from conftest import run_config
    from typer.testing import CliRunner

    from promptkit.cli import app

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(tmp_path / "no-such-model", sentiment_data)))
    options = [item for setting in settings for item in ("--set", setting)]
    result = CliRunner().invoke(app, ["template", "autoprompt", str(path), *options])
    assert result.exit_code == 2 and message in result.output
