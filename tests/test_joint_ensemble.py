"""Ensembles trained jointly: several prompts of one task in one run, trained on the loss of
their combination, saved and loaded as one model."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

import promptkit
from promptkit.errors import ConfigError, PromptkitError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.text.joint_ensemble import JointEnsemble

TEXTS = ["the movie was great", "a dull plot", "so bad", "i loved this film"]
MEMBERS = [
    {},
    {"template": "[P*2] <x> so [MASK]"},
    {
        "template": "<x> [P1] really [MASK]!",
        "head": {"verbalizer": {"positive": ["good"], "negative": ["bad"]}},
    },
]


def joint_config(model_dir, data, combine="mean", **keys):
    config = run_config(
        model_dir("gpt2"), data, ensemble={"members": MEMBERS, "combine": combine}, **keys
    )
    config["trainer"]["epochs"] = 2
    return config


@pytest.mark.parametrize("combine", ["mean", "weighted"])
def test_members_train_together_and_load_as_one(model_dir, sentiment_data, combine):
    result = fit(validate_config(joint_config(model_dir, sentiment_data, combine)))
    model = result.predictor.model
    assert isinstance(model, JointEnsemble) and len(model.members) == 3
    member_batches = [m.collate(m.encode(m.examples(TEXTS))) for m in model.members]
    with torch.no_grad():
        members = torch.stack(
            [m(b).log_softmax(-1) for m, b in zip(model.members, member_batches, strict=True)]
        )
        weights = model.weights.softmax(0)
        want = (weights[:, None, None] * members).sum(0).softmax(-1)
    got = torch.tensor([list(p.values()) for p in result.predictor.predict_proba(TEXTS)])
    assert torch.allclose(got, want, atol=1e-5)
    if combine == "weighted":
        assert not torch.equal(model.weights, torch.zeros(3))  # the weights trained
    trained_prompts = [m.prompts.collapse() for m in model.members]
    loaded = promptkit.load(result.run_dir)
    assert loaded.predict_proba(TEXTS) == result.predictor.predict_proba(TEXTS)
    for member, table in zip(loaded.model.members, trained_prompts, strict=True):
        assert torch.equal(member.prompts.collapse(), table)
    with pytest.raises(PromptkitError, match="ensemble trained jointly"):
        promptkit.load({"a": result.run_dir, "b": result.run_dir})


def test_what_a_joint_ensemble_refuses(model_dir, sentiment_data):
    bad = joint_config(model_dir, sentiment_data, trainable=["prompts", "bias"])
    with pytest.raises(ConfigError, match="train prompts and heads only"):
        fit(validate_config(bad))
    other_inputs = joint_config(model_dir, sentiment_data)
    other_inputs["ensemble"]["members"] = [{}, {"template": "<x> <y> so [P1] [MASK]"}]
    with pytest.raises(ConfigError, match="read different inputs"):
        fit(validate_config(other_inputs))
    other_classes = joint_config(model_dir, sentiment_data)
    other_classes["ensemble"]["members"] = [
        {},
        {"head": {"verbalizer": {"good": ["great"], "bad": ["dull"]}}},
    ]
    with pytest.raises(ConfigError, match="disagree on the classes"):
        fit(validate_config(other_classes))
    shared = joint_config(model_dir, sentiment_data)
    shared["ensemble"]["members"] = [{}, {"trainer": {"epochs": 1}}]
    with pytest.raises(ConfigError, match="replaces template, head or prompts only"):
        fit(validate_config(shared))
