"""Many runs on one backbone: a mixed batch answers every row as its own run would alone."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from conftest import SEQ2SEQ, run_config

import promptkit
from promptkit.backbone.loading import load_backbone
from promptkit.errors import BackboneMismatchError, PromptkitError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.host import Host
from promptkit.serving.predictor import Predictor
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model
from promptkit.text.placements import PLACEMENTS
from promptkit.text.placements.input import InputConfig, InputPlacement

SENTIMENT = {"positive": ["great", "good"], "negative": ["terrible", "bad"]}
TEXTS = ["the movie was great", "a dull plot", "i loved this film and the acting", "so bad"]
WORD_LISTS = [["the", "movie", "was", "great"], ["a", "dull", "plot"], ["fun"]]


def _tasks(family: str) -> dict[str, dict]:
    """Recipes that differ in placement, prompt length and head, for one backbone family."""
    mask = "" if family in SEQ2SEQ else " [MASK]"
    tasks = {
        "input-verbalizer": {
            "template": "<x> it was [P1][P2] [MASK].",
            "head": {"verbalizer": SENTIMENT},
        },
        "prefix3-classifier": {
            "template": "[P*3] <x> [MASK].",
            "prompts": {"placement": "prefix", "encoder": "none"},
            "head": {"type": "classifier", "pool": "mean", "classes": ["a", "b", "c"]},
        },
        "prefix6-verbalizer": {
            "template": "[P*6] <x> it was [MASK].",
            "prompts": {"placement": "prefix", "encoder": "none"},
            "head": {"verbalizer": SENTIMENT},
        },
        "input-soft-verbalizer": {
            "template": "[P*2] <x> it was [MASK].",
            "head": {"type": "soft_verbalizer", "verbalizer": SENTIMENT},
        },
        "deep-classifier": {
            "template": "[P*4] <x> [MASK].",
            "prompts": {"placement": "deep"},
            "head": {"type": "classifier", "pool": "mean", "classes": ["x", "y"]},
        },
    }
    if family in ("gpt2", "llama", "t5"):
        tasks["prefix-writer"] = {
            "template": "[P*4] <x> so it was" + mask,
            "prompts": {"placement": "prefix", "encoder": "none"},
            "head": {"type": "generation", "max_new_tokens": 5},
        }
        tasks["deep-writer"] = {
            "template": "[P*2] <x> so it was" + mask,
            "prompts": {"placement": "deep"},
            "head": {"type": "generation", "max_new_tokens": 5},
        }
    if family == "bert":
        tasks["deep-tagger"] = {
            "template": "[P*2] <x>",
            "prompts": {"placement": "deep"},
            "head": {"type": "token", "classes": ["O", "B-x", "I-x"]},
        }
        tasks["input-tagger"] = {
            "template": "<x> [P*3]",
            "head": {"type": "token", "classes": ["O", "B-y"]},
        }
    if family in SEQ2SEQ:  # the verbalizers read the decoder; [MASK] is T5's sentinel
        for name in ("input-verbalizer", "prefix6-verbalizer"):
            tasks[name]["template"] = tasks[name]["template"].replace(" [MASK].", " [MASK]")
    return tasks


def hosted(model_dir, family: str) -> Host:
    """Each task's model on one backbone, their prompts and heads moved off their start."""
    backbone = load_backbone(str(model_dir(family)))
    models = {}
    for number, (name, extra) in enumerate(_tasks(family).items()):
        recipe = ModelConfig.model_validate({"backbone": {"name": "x"}, "seed": number, **extra})
        model = build_model(recipe, backbone=backbone).eval()
        with torch.no_grad():
            for param in [*model.prompts.parameters(), *model.head.parameters()]:
                param.add_(torch.randn_like(param) * 0.5)
        models[name] = model
    return Host(models)


def _items(host: Host, task: str) -> list:
    return WORD_LISTS if host.models[task].task.name == "tagging" else TEXTS


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_a_mixed_batch_answers_each_row_as_its_run_alone(model_dir, family):
    host = hosted(model_dir, family)
    scored = [t for t in host.runs if host.models[t].task.has_classes]
    pairs = [
        (t, item)
        for item_index in range(3)
        for t in scored
        for item in _items(host, t)[item_index : item_index + 1]
    ]
    mixed = host.predict_proba(pairs, batch_size=5)
    for (task, item), probabilities in zip(pairs, mixed, strict=True):
        alone = Predictor(host.models[task]).predict_proba([item])[0]
        got = probabilities if isinstance(probabilities, list) else [probabilities]
        want = alone if isinstance(alone, list) else [alone]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            assert all(abs(g[c] - w[c]) < 1e-5 for c in g), (task, item)
    labels = host.predict(pairs, batch_size=5)
    for (task, item), label in zip(pairs, labels, strict=True):
        assert label == Predictor(host.models[task]).predict([item])[0]


def test_a_closed_host_leaves_the_backbone_as_it_found_it(model_dir):
    host = hosted(model_dir, "bert")
    layers = host.placement.placements[0].backbone_layers
    hooks = sum(len(layer._forward_pre_hooks) for layer in layers)
    added = len(host.placement._handles)  # the mixed deep prompts' own
    assert added
    with host:
        assert host.predict(TEXTS, run="deep-classifier")
    assert sum(len(layer._forward_pre_hooks) for layer in layers) == hooks - added
    alone = host.models["deep-classifier"]
    assert Predictor(alone).predict(TEXTS)  # the models still answer alone
    with pytest.raises(PromptkitError, match="closed"):
        host.predict(TEXTS, run="deep-classifier")


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_generators_and_classifiers_share_a_call(model_dir, family):
    host = hosted(model_dir, family)
    pairs = [(t, text) for text in TEXTS for t in host.runs]
    answers = host.predict(pairs, batch_size=7)
    for (task, text), answer in zip(pairs, answers, strict=True):
        assert answer == Predictor(host.models[task]).predict([text])[0], task
    writers = [t for t in host.runs if not host.models[t].task.has_classes]
    beams = host.generate([(t, x) for x in TEXTS for t in writers], num_beams=3)
    expected = [
        Predictor(host.models[t]).generate([x], num_beams=3)[0] for x in TEXTS for t in writers
    ]
    assert beams == expected


def test_the_logits_differ_per_run(model_dir):
    """The check above would pass if every row got one task's prompts and the heads agreed;
    here two tasks with the same head but different prompts disagree on the same text."""
    host = hosted(model_dir, "gpt2")
    both = host.predict_proba([("input-verbalizer", TEXTS[0]), ("prefix6-verbalizer", TEXTS[0])])
    assert abs(both[0]["positive"] - both[1]["positive"]) > 1e-4


def test_items_must_name_their_run(model_dir):
    host = hosted(model_dir, "gpt2")
    with pytest.raises(PromptkitError, match=r"\(run, item\) pair"):
        host.predict(["the movie was great"])
    with pytest.raises(PromptkitError, match="no run is named 'nope'"):
        host.predict(["x"], run="nope")
    with pytest.raises(PromptkitError, match="writes text"):
        host.predict_proba([("prefix-writer", "great")])
    with pytest.raises(PromptkitError, match="does not write text"):
        host.generate([("input-verbalizer", "great")])
    one = host.predict(TEXTS, run="input-verbalizer")
    assert one == Predictor(host.models["input-verbalizer"]).predict(TEXTS)


def test_a_run_name_that_is_not_a_text_is_an_error(model_dir):
    host = hosted(model_dir, "gpt2")
    for run in (["input-verbalizer"], {"a": 1}):
        with pytest.raises(PromptkitError, match="no run is named"):
            host.predict([(run, "great")])
        with pytest.raises(PromptkitError, match="no run is named"):
            host.describe(run)
    with pytest.raises(PromptkitError, match="not valid Unicode"):
        host.predict(["\ud800 great"], run="input-verbalizer")


def _fitted(model_dir, data, name: str, **extra) -> str:
    config = run_config(model_dir("gpt2"), data, output_dir=str(data / name), **extra)
    config["trainer"]["epochs"] = 1
    return str(fit(validate_config(config)).run_dir)


def test_load_puts_runs_on_one_backbone(model_dir, sentiment_data):
    plain = _fitted(model_dir, sentiment_data, "plain")
    prefix = _fitted(
        model_dir,
        sentiment_data,
        "prefix",
        template="[P*3] <x> it was [MASK].",
        prompts={"placement": "prefix", "encoder": "none"},
    )
    host = promptkit.load([plain, prefix])
    assert host.runs == ["plain", "prefix"]
    assert host.models["plain"].backbone is host.models["prefix"].backbone
    pairs = [("plain", TEXTS[0]), ("prefix", TEXTS[1]), ("plain", TEXTS[2])]
    assert host.predict(pairs) == [
        promptkit.load(plain).predict([TEXTS[0]])[0],
        promptkit.load(prefix).predict([TEXTS[1]])[0],
        promptkit.load(plain).predict([TEXTS[2]])[0],
    ]
    named = promptkit.load({"a": plain, "b": prefix})
    assert named.runs == ["a", "b"] and named.describe("b")["classes"] == ["positive", "negative"]
    with pytest.raises(PromptkitError, match="two runs are named"):
        promptkit.load([plain, plain])


def test_load_refuses_runs_that_cannot_share(model_dir, sentiment_data):
    plain = _fitted(model_dir, sentiment_data, "plain")
    tuned = _fitted(model_dir, sentiment_data, "tuned", trainable=["prompts", "all"])
    with pytest.raises(PromptkitError, match=r"tuned trained the backbone's own weights \(all\)"):
        promptkit.load([plain, tuned])
    alone = promptkit.load([tuned])  # as `promptkit serve RUN` hosts it: nothing to share
    assert alone.predict_proba(TEXTS, "tuned") == promptkit.load(tuned).predict_proba(TEXTS)
    other = run_config(model_dir("llama"), sentiment_data, output_dir=str(sentiment_data / "o"))
    other["trainer"]["epochs"] = 1
    llama = str(fit(validate_config(other)).run_dir)
    with pytest.raises(BackboneMismatchError, match="fingerprint"):
        promptkit.load([plain, llama])


class ScaledConfig(InputConfig):
    placement: Literal["scaled"] = "scaled"
    scale: float = 3.0


class ScaledPlacement(InputPlacement):
    """The README's example placement: input prompts scaled by a constant."""

    name = "scaled"
    config = ScaledConfig

    def __init__(self, config: ScaledConfig, model) -> None:
        super().__init__(config, model)
        self.scale = config.scale

    def contribution(self, vectors, batch):
        return super().contribution(vectors * self.scale, batch)


def test_a_placement_of_ones_own_is_mixed_through_its_contribution(model_dir, monkeypatch):
    monkeypatch.setitem(PLACEMENTS, "scaled", ScaledPlacement)
    backbone = load_backbone(str(model_dir("bert")))
    tasks = _tasks("bert")
    models = {}
    for name in ("input-verbalizer", "prefix6-verbalizer", "deep-classifier"):
        recipe = ModelConfig.model_validate({"backbone": {"name": "x"}, **tasks[name]})
        if name == "input-verbalizer":
            recipe = recipe.model_copy(update={"prompts": ScaledConfig()})
        models[name] = build_model(recipe, backbone=backbone).eval()
    assert isinstance(models["input-verbalizer"].placement, ScaledPlacement)
    host = Host(models)
    pairs = [(name, text) for text in TEXTS for name in models]
    mixed = host.predict_proba(pairs, batch_size=6)
    unscaled = build_model(
        ModelConfig.model_validate({"backbone": {"name": "x"}, **tasks["input-verbalizer"]}),
        backbone=backbone,
    ).eval()
    unscaled.load_trained_state(models["input-verbalizer"].trained_state())
    for (name, text), got in zip(pairs, mixed, strict=True):
        want = Predictor(models[name]).predict_proba([text])[0]
        assert all(abs(got[c] - want[c]) < 1e-5 for c in got), (name, text)
    scaled = Predictor(models["input-verbalizer"]).predict_proba(TEXTS)
    assert scaled != Predictor(unscaled).predict_proba(TEXTS)  # the scale does change answers


def test_a_placement_that_only_defines_its_forward_cannot_be_mixed(model_dir):
    with pytest.raises(TypeError, match="define contribution"):

        class Unmixable(InputPlacement):
            def forward_kwargs(self, batch, vectors):
                return self.embedded(batch, vectors * 2)

    class Alone(InputPlacement):
        mixable = False

        def forward_kwargs(self, batch, vectors):
            return self.embedded(batch, vectors * 2)

    backbone = load_backbone(str(model_dir("bert")))
    tasks = _tasks("bert")
    models = {
        name: build_model(
            ModelConfig.model_validate({"backbone": {"name": "x"}, **tasks[name]}),
            backbone=backbone,
        )
        for name in ("input-verbalizer", "deep-classifier")
    }
    models["input-verbalizer"].placement = Alone(InputConfig(), backbone.model)
    with pytest.raises(PromptkitError, match="'input-verbalizer'.*cannot share a batch"):
        Host(models)
    assert Host({"alone": models["input-verbalizer"]}).models
