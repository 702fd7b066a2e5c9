"""Template search by prompt scoring: hard candidates scored zero-shot, best first."""

from __future__ import annotations

import pytest
from conftest import run_config
from typer.testing import CliRunner

from promptkit.cli import app
from promptkit.errors import ConfigError, PromptkitError, TemplateError
from promptkit.modalities import modality_of
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import evaluate_split
from promptkit.runs.template_search import catalog_candidates, score_templates
from promptkit.text.model import build_model

CANDIDATES = ["<x> it was [MASK].", "<x> so the movie was [MASK]!", "<x> [MASK]"]


def config_for(model_dir, data, **extra):
    return validate_config(run_config(model_dir("gpt2"), data, **extra))


def test_each_candidate_scores_as_its_own_zero_shot_model(model_dir, sentiment_data):
    config = config_for(model_dir, sentiment_data)
    scores = score_templates(config, CANDIDATES)
    assert sorted(s.template for s in scores) == sorted(CANDIDATES)
    assert [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)
    for score in scores:
        assert score.metric == "accuracy" and score.metrics["accuracy"] == score.score
        data = {**config.model_dump(mode="json"), "template": score.template, "trainable": []}
        data["trainer"]["lr"] = {}
        alone = validate_config(data)
        prepared = modality_of(data).prepare(alone)
        model = build_model(alone.recipe(), prepared.model.classes)
        assert evaluate_split(model, prepared.splits.validation) == score.metrics


def test_candidates_are_checked_before_any_model_loads(model_dir, sentiment_data):
    config = config_for(model_dir, sentiment_data)
    with pytest.raises(PromptkitError, match="no candidate templates"):
        score_templates(config, [])
    with pytest.raises(ConfigError, match=r"candidate 2 .* has soft slots"):
        score_templates(config, ["<x> [MASK]", "<x> [P1] [MASK]"])
    classifier = config_for(
        model_dir, sentiment_data, head={"type": "classifier", "classes": ["a", "b"]}
    )
    with pytest.raises(ConfigError, match="needs a verbalizer head"):
        score_templates(classifier, ["<x> [MASK]"])
    with pytest.raises(TemplateError, match=r"candidate 2 \('\[MASK\] <x>'\)"):
        score_templates(config, ["<x> [MASK]", "[MASK] <x>"])  # a causal LM reads nothing


def test_an_unmeasured_metric_is_refused_before_any_model_loads(sentiment_data, tmp_path):
    trainer = {"metric": "bleu", "progress": False}
    config = validate_config(run_config(tmp_path / "nowhere", sentiment_data, trainer=trainer))
    with pytest.raises(ConfigError, match=r"trainer.metric 'bleu' is not measured: choose one"):
        score_templates(config, ["<x> it was [MASK]."])


def test_the_catalog_offers_its_hard_templates_with_the_same_inputs(model_dir, sentiment_data):
    config = config_for(model_dir, sentiment_data)
    found = catalog_candidates(config)
    assert {"sentiment_cloze", "sentiment_review", "null_prompt"} <= set(found)
    assert "sentiment_ptuning" not in found and "nli_cloze" not in found


def test_the_command_ranks_the_candidates(model_dir, sentiment_data, tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(model_dir("gpt2"), sentiment_data)))
    result = CliRunner().invoke(
        app, ["template", "search", str(path), "--candidate", CANDIDATES[0], "--catalog"]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "sentiment_review" in result.output
    assert "best: " in result.output
    bad = CliRunner().invoke(app, ["template", "search", str(path), "--candidate", "<x> [P1]"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
