"""Ensembles of prompts: members on one backbone, combined by mean, learned weights or vote."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

import promptkit
from promptkit import RunEnsemble
from promptkit.errors import ConfigError, PromptkitError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit

TEXTS = ["the movie was great", "a dull plot", "so bad", "i loved this film", "it was fine"]
LABELS = ["positive", "negative", "negative", "positive", "positive"]
TEMPLATES = ["<x> it was [P1] [MASK].", "[P*2] <x> so [MASK]", "<x> [P1] really [MASK]!"]


@pytest.fixture(scope="module")
def members(model_dir, tmp_path_factory) -> list[str]:
    import json

    from conftest import sentiment_rows

    root = tmp_path_factory.mktemp("ensemble")
    for name, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2)):
        rows = "".join(json.dumps(r) + "\n" for r in sentiment_rows(n, seed))
        (root / f"{name}.jsonl").write_text(rows)
    runs = []
    for number, template in enumerate(TEMPLATES):
        config = run_config(
            model_dir("gpt2"), root, template=template, output_dir=str(root / f"m{number}")
        )
        config["trainer"]["epochs"] = 1
        runs.append(str(fit(validate_config(config)).run_dir))
    return runs


def member_probs(runs: list[str]) -> torch.Tensor:
    """``[M, N, C]`` from each run's own Predictor."""
    out = []
    for run in runs:
        predictor = promptkit.load(run)
        rows = predictor.predict_proba(TEXTS)
        out.append([[row[c] for c in predictor.classes] for row in rows])
    return torch.tensor(out)


def test_mean_log_probability(members):
    together = RunEnsemble.of(members)
    got = torch.tensor([list(p.values()) for p in together.predict_proba(TEXTS)])
    want = member_probs(members).log().mean(0).softmax(-1)
    assert torch.allclose(got, want, atol=1e-5)
    assert together.predict(TEXTS) == [together.classes[i] for i in want.argmax(-1).tolist()]


def test_majority_vote(members):
    voted = RunEnsemble.of(members, combine="vote").predict(TEXTS)
    choices = member_probs(members).argmax(-1)  # [M, N]
    for n, label in enumerate(voted):
        counts = torch.bincount(choices[:, n], minlength=2)
        assert counts[["positive", "negative"].index(label)] == counts.max()


def test_weights_learned_on_labelled_data_fit_it_better(members):
    together = RunEnsemble.of(members)
    log_probs = together.member_log_probs(TEXTS)
    target = torch.tensor([together.classes.index(label) for label in LABELS])

    def loss(weights: dict[str, float]) -> float:
        w = torch.tensor([weights[name] for name in together.host.runs])
        mixed = (w[:, None, None] * log_probs).sum(0)
        return float(torch.nn.functional.cross_entropy(mixed, target))

    equal = loss(together.weights)
    learned = together.fit_weights(TEXTS, LABELS)
    assert together.combine == "weighted" and abs(sum(learned.values()) - 1) < 1e-5
    assert loss(learned) <= equal + 1e-6


def test_saved_and_loaded_as_one(members, tmp_path):
    together = RunEnsemble.of(members, combine="vote")
    folder = together.save(tmp_path / "ensemble")
    again = RunEnsemble.load(folder)
    assert again.combine == "vote" and again.predict_proba(TEXTS) == together.predict_proba(TEXTS)
    loaded = promptkit.load(folder)
    assert isinstance(loaded, RunEnsemble) and loaded.predict(TEXTS) == together.predict(TEXTS)
    with pytest.raises(PromptkitError, match="is not an empty folder"):
        together.save(folder)


def test_members_must_be_one_task(members, model_dir, sentiment_data):
    config = run_config(
        model_dir("gpt2"),
        sentiment_data,
        head={"verbalizer": {"negative": ["bad"], "positive": ["great"]}},
        output_dir=str(sentiment_data / "swapped"),
    )
    config["trainer"]["epochs"] = 1
    swapped = str(fit(validate_config(config)).run_dir)
    with pytest.raises(ConfigError, match="members disagree on the classes"):
        RunEnsemble.of([members[0], swapped])
    with pytest.raises(PromptkitError, match="two or more runs"):
        RunEnsemble.of({"only": members[0]})
    with pytest.raises(ConfigError, match="combine is one of"):
        RunEnsemble.of(members, combine="median")


def test_the_command_line_saves_evaluates_and_predicts_with_it(members, tmp_path):
    import json

    from test_cli import invoke as cli

    data = tmp_path / "labelled.jsonl"
    rows = [{"text": t, "label": int(y == "positive")} for t, y in zip(TEXTS, LABELS, strict=True)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ensemble"
    result = cli(
        "ensemble", *members, "--output", str(out), "--combine", "weighted", "--data", str(data)
    )
    assert result.exit_code == 0, result.output
    saved = RunEnsemble.load(out)
    assert saved.combine == "weighted" and "ensemble (weighted) saved" in result.output
    scored = cli("eval", str(out), "--data", str(data))
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.output[scored.output.index("{") :])  # after load progress
    expected = saved.evaluate(TEXTS, LABELS)
    assert metrics["ensemble"]["accuracy"] == pytest.approx(expected["ensemble"]["accuracy"])
    assert set(metrics) == {"ensemble", *saved.host.runs}
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    written = tmp_path / "predictions.jsonl"
    assert cli("predict", str(out), "--input", str(inputs), "--output", str(written)).exit_code == 0
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert [line["prediction"] for line in lines] == saved.predict(TEXTS)
    refused = cli("ensemble", *members, "--output", str(tmp_path / "e2"), "--combine", "weighted")
    assert refused.exit_code != 0 and "give --data" in refused.output
    assert cli("ensemble", *members, "--output", str(out)).exit_code != 0  # not empty


def test_the_former_name_ensemble_still_works():
    with pytest.warns(DeprecationWarning, match="promptkit.Ensemble is now promptkit.RunEnsemble"):
        assert promptkit.Ensemble is promptkit.RunEnsemble
