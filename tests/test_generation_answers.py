"""What a generator's answer is: where it starts and ends (leading whitespace, stop strings),
empty answers counted with their cause on every path, decoding options from the command line,
lists of references, and decoding only where a text metric needs it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import yaml
from conftest import (
    make_tokenizer,
    prompt_model,
    run_config,
    sentiment_rows,
    small_config,
    write_splits,
)
from fastapi.testclient import TestClient
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from promptkit.cli import app
from promptkit.errors import EmptyAnswersWarning
from promptkit.modalities import modality_of
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.host import Host
from promptkit.serving.server import create_app
from promptkit.text.model import PromptModel

NEWLINE = "\n"
TEMPLATE = "<x> so it was [MASK]"  # the prompt's last token is "was"


def scripted(folder, chain: dict[str, str]):
    """A tiny Llama (and its tokenizer, with a newline token) saved in ``folder`` that
    writes, after each token of ``chain``, the token it maps to: its attention and MLP add
    nothing, so each position's logits come from its own token's embedding."""
    tokenizer = make_tokenizer(False)
    tokenizer.add_tokens([NEWLINE])
    config = LlamaConfig(
        **{**small_config(num_key_value_heads=2, pad_token_id=0), "vocab_size": len(tokenizer)},
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for dim, (before, after) in enumerate(chain.items()):
            model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(before), dim] = 1.0
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(after), dim] = 10.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def writer(folder, **head) -> PromptModel:
    return prompt_model(
        folder,
        template=TEMPLATE,
        head={"type": "generation", "max_new_tokens": 6, **head},
        trainable=[],
    ).eval()


# Writes "\n great \n great ...": a newline before its first word, and after it.
NEWLINE_FIRST = {"was": NEWLINE, NEWLINE: "great", "great": NEWLINE}
CAUSES = {
    "end": ({"was": "[SEP]"}, [], "the end token came first"),
    "whitespace": ({"was": NEWLINE, NEWLINE: NEWLINE}, [NEWLINE], "only whitespace was written"),
    "stop": (NEWLINE_FIRST, ["great"], "a stop string came before any text"),
}


def test_a_newline_before_the_first_word_does_not_end_the_answer(tmp_path):
    model = writer(scripted(tmp_path, NEWLINE_FIRST), stop=[NEWLINE])
    steps = []
    model.lm.register_forward_hook(lambda *_: steps.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyAnswersWarning)
        assert model.generate(model.examples(["the movie"])) == ["great"]
    assert len(steps) == 3  # "\n", "great", "\n": decoding stops at the newline after the word
    assert model.generate(model.examples(["the movie"]), stop=[]) == ["great \n great \n great"]
    for options in ({"num_beams": 2}, {"do_sample": True, "top_k": 5}):
        assert model.generate(model.examples(["the movie", "a film"]), **options) == ["great"] * 2


@pytest.mark.parametrize("cause", list(CAUSES))
def test_an_empty_answer_is_counted_with_its_cause(tmp_path, cause):
    chain, stop, said = CAUSES[cause]
    model = writer(scripted(tmp_path, chain), stop=stop)
    examples = model.examples(["the movie", "a film"])
    with pytest.warns(EmptyAnswersWarning, match=f"^2 of 2 answers are empty: 2 because {said}"):
        assert model.generate(examples) == ["", ""]
    host = Host({"writer": model})
    rows = host.bind(["the movie", "a film"])
    assert [a.empty for a in host.answer(rows)] == [cause, cause]
    for answer in (host.generate, host.predict):
        with pytest.warns(
            EmptyAnswersWarning, match=f"^1 of 1 answers are empty: 1 because {said}"
        ):
            answer(["the movie"])
    with TestClient(create_app(host)) as client:
        body = client.post("/predict", json={"run": "writer", "inputs": ["the movie"]}).json()
    assert body["predictions"] == [""] and body["empty"] == [cause]
    assert body["warning"].startswith(f"1 of 1 answers are empty: 1 because {said}")


def test_a_written_answer_has_no_empty_cause_in_the_server(tmp_path):
    host = Host({"writer": writer(scripted(tmp_path, NEWLINE_FIRST), stop=[NEWLINE])})
    with TestClient(create_app(host)) as client:
        body = client.post("/predict", json={"run": "writer", "inputs": ["the movie"]}).json()
    assert body == {
        "run": "writer",
        "predictions": ["great"],
        "probabilities": None,
        "empty": [None],
        "warning": None,
    }


SUBJECTS = ["the movie", "the film", "the plot", "the story"]


def text_data(folder, targets):
    """train / validation / test jsonl files whose rows (distinct inputs) have the given
    targets."""
    rows = [{"text": text, "target": t} for text, t in zip(SUBJECTS, targets, strict=False)]
    write_rows(folder, rows)


def write_rows(folder, rows):
    for name in ("train", "validation", "test"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def generator_config(model_folder, data_folder, **trainer):
    config = run_config(
        model_folder,
        data_folder,
        template=TEMPLATE,
        head={"type": "generation", "max_new_tokens": 4},
        trainable=[],
        trainer={"epochs": 0, "progress": False, **trainer},
    )
    config["data"] = {**config["data"], "label_column": "target", "label_map": None}
    return config


def test_fit_writes_empty_answers_into_train_log(tmp_path):
    model_folder = scripted(tmp_path / "model", {"was": "[SEP]"})
    text_data(tmp_path, ["great", "bad", "fun"])
    result = fit(validate_config(generator_config(model_folder, tmp_path, metric="bleu")))
    log = (result.run_dir / "train.log").read_text()
    said = "3 of 3 answers are empty: 3 because the end token came first"
    assert f"zero-shot: {said}" in log and f"test: {said}" in log


@pytest.mark.parametrize(("metric", "splits_decoded"), [("loss", 1), ("bleu", 2)])
def test_a_zero_shot_generator_decodes_validation_only_for_a_text_metric(
    model_dir, tmp_path, monkeypatch, metric, splits_decoded
):
    calls = []
    original = PromptModel.generate
    monkeypatch.setattr(
        PromptModel, "generate", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    text_data(tmp_path, ["great", "bad", "fun"])
    result = fit(validate_config(generator_config(model_dir("gpt2"), tmp_path, metric=metric)))
    assert len(calls) == splits_decoded  # the test split, and validation for a text metric
    assert ("bleu" in result.validation) == (metric == "bleu")
    assert "bleu" in result.test


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """A zero-shot generator run and a zero-shot classifier run on the tiny GPT-2."""
    root = tmp_path_factory.mktemp("decoding")
    text_data(root, ["great", "bad", "fun"])
    writes = fit(validate_config(generator_config(model_dir("gpt2"), root))).run_dir
    (root / "sentiment").mkdir()
    sentiment = write_splits(root / "sentiment", sentiment_rows, sizes=(8, 4, 4))
    trainer = {"epochs": 0, "progress": False}
    hard = "<x> it was [MASK]."
    config = run_config(model_dir("gpt2"), sentiment, template=hard, trainable=[], trainer=trainer)
    labels = fit(validate_config(config)).run_dir
    return {"writes": writes, "labels": labels, "input": root / "test.jsonl", "root": root}


def predict(runs, run, *decoding):
    out = runs["root"] / "out.jsonl"
    options = [arg for option in decoding for arg in ("--decoding", option)]
    command = ["predict", str(runs[run]), "--input", str(runs["input"]), "--output", str(out)]
    return CliRunner().invoke(app, [*command, "--overwrite", *options])


# Each decoding option, a value for it, and what generate() gets from it.
OPTIONS = [
    (["max_new_tokens=2"], "max_new_tokens", 2),
    (["num_beams=3"], "num_beams", 3),
    (["do_sample=true"], "do_sample", True),
    (["do_sample=true", "temperature=0.5"], "temperature", 0.5),
    (["do_sample=true", "top_p=0.9"], "top_p", 0.9),
    (["do_sample=true", "top_k=7"], "top_k", 7),
    (["repetition_penalty=1.3"], "repetition_penalty", 1.3),
    (["no_repeat_ngram_size=2"], "no_repeat_ngram_size", 2),
]


@pytest.mark.parametrize(("decoding", "key", "value"), OPTIONS)
def test_each_decoding_option_reaches_generate(runs, monkeypatch, decoding, key, value):
    seen = []
    original = GenerationMixin.generate
    monkeypatch.setattr(
        GenerationMixin, "generate", lambda self, **k: seen.append(k) or original(self, **k)
    )
    result = predict(runs, "writes", *decoding)
    assert result.exit_code == 0, result.output
    assert seen and all(call[key] == value for call in seen)
    given = len(seen)
    assert predict(runs, "writes").exit_code == 0
    assert all(call.get(key) != value for call in seen[given:])  # the run's own options


def test_stop_strings_reach_generate(runs, monkeypatch):
    seen = []
    original = GenerationMixin.generate
    monkeypatch.setattr(
        GenerationMixin, "generate", lambda self, **k: seen.append(k) or original(self, **k)
    )
    assert predict(runs, "writes", 'stop=["so", "!"]').exit_code == 0
    assert [c.stop for c in seen[0]["stopping_criteria"]] == [["so", "!"]]
    assert predict(runs, "writes", "stop=[]").exit_code == 0
    assert list(seen[-1]["stopping_criteria"]) == []


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("max_new_tokens=0", "max_new_tokens"),
        ("num_beams=0", "num_beams"),
        ("do_sample=maybe", "do_sample"),
        ("temperature=0.5", "do_sample is false"),
        ("top_p=1.5", "top_p"),
        ("top_k=0", "top_k"),
        ("repetition_penalty=-1", "repetition_penalty"),
        ("no_repeat_ngram_size=0", "no_repeat_ngram_size"),
        ('stop=[""]', "a stop string is empty"),
        ("stop=5", "stop"),
        ("beams=2", "'beams': not a decoding option"),
        ("target=x", "'target': not a decoding option"),
        ("num_beams", "write KEY=VALUE"),
    ],
)
def test_a_bad_decoding_option_is_refused(runs, option, said):
    result = predict(runs, "writes", option)
    assert result.exit_code == 2 and said in result.output, result.output
    assert "Traceback" not in result.output


def test_decoding_on_a_run_that_labels_classes_is_an_error(runs):
    result = predict(runs, "labels", "num_beams=2")
    assert result.exit_code == 2 and "labels classes: drop --decoding" in result.output
    assert predict(runs, "labels").exit_code == 0


def test_predict_and_eval_count_empty_answers_on_stderr(tmp_path):
    model_folder = scripted(tmp_path / "model", {"was": "[SEP]"})
    text_data(tmp_path, ["great", "bad", "fun"])
    run_dir = fit(validate_config(generator_config(model_folder, tmp_path))).run_dir
    runner = CliRunner()
    said = "warning: 3 of 3 answers are empty: 3 because the end token came first"
    out = tmp_path / "out.jsonl"
    written = runner.invoke(
        app,
        ["predict", str(run_dir), "--input", str(tmp_path / "test.jsonl"), "--output", str(out)],
    )
    assert written.exit_code == 0 and said in written.stderr and said not in written.stdout
    scored = runner.invoke(app, ["eval", str(run_dir), "--data", str(tmp_path / "test.jsonl")])
    assert scored.exit_code == 0 and said in scored.stderr


def test_a_list_of_references_is_one_input_with_several_answers(model_dir, tmp_path):
    """Lists of targets, and the same rows written one reference per row, train on the
    same examples and score the same."""
    references = [["it was great", "so great"], ["bad"], ["fun", "fun", "it was fun"]]
    text_data(tmp_path, [*references[:1], "bad", *references[2:]])
    listed = validate_config(generator_config(model_dir("gpt2"), tmp_path, metric="bleu"))
    flat = tmp_path / "flat"
    flat.mkdir()
    pairs = zip(SUBJECTS, references, strict=False)
    write_rows(flat, [{"text": text, "target": t} for text, refs in pairs for t in refs])
    spread = validate_config(generator_config(model_dir("gpt2"), flat, metric="bleu"))
    prepared = [modality_of(c.model_dump()).prepare(c).splits for c in (listed, spread)]
    assert [len(s.train) for s in prepared] == [6, 6]
    assert prepared[0].train.labels == prepared[1].train.labels
    results = [fit(config) for config in (listed, spread)]
    assert results[0].test == results[1].test
    runner = CliRunner()
    scores = [
        runner.invoke(app, ["eval", str(results[0].run_dir), "--data", str(d / "test.jsonl")])
        for d in (tmp_path, flat)
    ]
    assert scores[0].exit_code == 0, scores[0].output
    assert json.loads(scores[0].stdout.splitlines()[-1]) == json.loads(
        scores[1].stdout.splitlines()[-1]
    )


@pytest.mark.parametrize("bad", [["fine", ""], ["fine", 3]])
def test_a_bad_reference_in_a_list_is_named(model_dir, tmp_path, bad):
    text_data(tmp_path, ["great", bad])
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(generator_config(model_dir("gpt2"), tmp_path)))
    result = CliRunner().invoke(app, ["fit", str(path)])
    assert result.exit_code == 2
    assert "row 2, column 'target': a reference is" in result.output
