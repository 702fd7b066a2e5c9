"""Multi-label classification: a list of classes per example, one sigmoid per class, thresholds
tuned on validation; with a classifier or a verbalizer head."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_config, write_splits

import promptkit
from promptkit.errors import ConfigError, DataError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.tasks import MULTI_LABEL
from promptkit.tasks.multi_label import best_thresholds

TOPICS = {"acting": ["actors"], "story": ["plot"], "look": ["scenes"]}


def rows(n: int, seed: int) -> list[dict]:
    """Each text names some of three topics; its label lists them (sometimes none)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        on = [t for t in TOPICS if torch.rand(1, generator=g) < 0.4]
        words = [TOPICS[t][0] for t in on] or ["film"]
        out.append({"text": "the " + " and ".join(words) + " was great", "label": on})
    return out


@pytest.fixture
def topic_data(tmp_path):
    return write_splits(tmp_path, rows, (48, 24, 24))


def config_for(model_dir, data, head: dict, **keys) -> dict:
    config = run_config(model_dir("bert-nodropout"), data, head=head, **keys)
    config["data"].pop("label_map")
    config["trainer"].update(epochs=2)
    return config


def test_a_classifier_learns_label_sets_and_saves_its_thresholds(model_dir, topic_data):
    config = config_for(
        model_dir,
        topic_data,
        {"type": "classifier", "multi_label": True},
        template="<x>",
        trainable=["head", "all"],
    )
    config["trainer"].update(epochs=6, lr={"head": 0.01, "all": 0.001})
    result = fit(validate_config(config))
    model = result.predictor.model
    assert model.task is MULTI_LABEL and model.classes == ["acting", "look", "story"]
    assert set(result.test) == {"micro_f1", "macro_f1", "exact_match"}
    assert result.test["micro_f1"] > 0.6
    loaded = promptkit.load(result.run_dir)
    assert torch.equal(loaded.model.thresholds, model.thresholds)
    texts = ["the actors and plot was great", "the film was great"]
    predicted = loaded.predict(texts)
    assert all(isinstance(p, list) for p in predicted)
    for labels, probs in zip(predicted, loaded.predict_proba(texts), strict=True):
        assert labels == [c for c, p in probs.items() if p >= 0.5]  # sigmoid, not softmax
    assert "logit thresholds tuned" in (result.run_dir / "train.log").read_text()


def test_a_verbalizer_reads_each_class_as_log_odds(model_dir, topic_data):
    head = {"verbalizer": {"acting": ["actors"], "story": ["plot"], "look": ["scenes"]}}
    config = config_for(model_dir, topic_data, {**head, "multi_label": True})
    result = fit(validate_config(config))
    model = result.predictor.model.eval()
    batch = model.collate(model.encode(model.examples(["the plot was great"])))
    model.thresholds = None
    with torch.no_grad():
        odds = model(batch)[0]
        model.head.task = promptkit.tasks.CLASSIFICATION
        log_probs = model(batch)[0]
    assert torch.allclose(odds.sigmoid(), log_probs.exp(), atol=1e-5)


def test_best_thresholds_maximise_f1():
    logits = torch.tensor([[2.0, -1.0], [0.5, -2.0], [-0.5, 3.0], [-3.0, 1.0]])
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0]])
    cut = best_thresholds(logits, labels)
    guess = logits >= cut
    assert guess[:, 0].tolist() == [True, True, False, False]
    assert guess[:, 1].tolist() == [False, False, True, False]
    assert best_thresholds(logits, torch.zeros(4, 2))[0] == 0  # a class never shown


def test_labels_must_be_lists_and_calibration_is_refused(model_dir, topic_data):
    config = config_for(model_dir, topic_data, {"type": "classifier", "multi_label": True})
    config["template"] = "<x>"
    config["trainable"] = ["head"]
    (topic_data / "bad.jsonl").write_text(json.dumps({"text": "a plot", "label": "story"}) + "\n")
    config["data"]["train"] = str(topic_data / "bad.jsonl")
    with pytest.raises(DataError, match="list of class names"):
        fit(validate_config(config))
    head = {"verbalizer": {"acting": ["actors"], "story": ["plot"]}, "multi_label": True}
    calibrated = config_for(model_dir, topic_data, head, calibration={})
    with pytest.raises(ConfigError, match="drop the calibration section"):
        fit(validate_config(calibrated))
