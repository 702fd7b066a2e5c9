"""The command line, end to end on tiny models."""

import json
import os

import pytest
import yaml
from conftest import run_config
from typer.testing import CliRunner

from promptkit.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_template_check_shows_the_pieces():
    result = invoke("template", "check", "<x> It was [P1:great][P2] [MASK].")
    assert result.exit_code == 0, result.output
    for piece in ("<x>", "[P1]", "[P2]", "[MASK]", "anchor", "init: great"):
        assert piece in result.output
    assert "1 input slot(s), 2 soft slot(s), a [MASK]" in result.output


def test_template_check_of_a_catalog_entry():
    result = invoke("template", "check", "null_prompt")
    assert result.exit_code == 0 and "0 soft slot(s)" in result.output


def test_template_check_fails_with_position():
    result = invoke("template", "check", "<x> It was [MSK].")
    assert result.exit_code == 2
    assert "line 1, column 12" in result.output and "unknown slot" in result.output
    assert "^" in result.output


def test_template_render_with_and_without_model(model_dir):
    example = json.dumps({"x": "the movie was fun"})
    plain = invoke("template", "render", "<x> it was [P1] [MASK].", "--example", example)
    assert plain.exit_code == 0 and "the movie was fun it was <P1> <MASK>." in plain.output
    tokens = invoke(
        "template",
        "render",
        "<x> it was [P1] [MASK].",
        "--example",
        example,
        "--model",
        str(model_dir("bert")),
    )
    assert tokens.exit_code == 0
    assert "[CLS]" in tokens.output and "soft [P1]" in tokens.output
    assert "answer read here" in tokens.output and "input word 3" in tokens.output
    bad = invoke("template", "render", "<x> [MASK]", "--example", "{not json")
    assert bad.exit_code == 2 and "not valid JSON" in bad.output


def test_catalog_lists_entries():
    result = invoke("catalog")
    assert result.exit_code == 0
    assert "null_prompt" in result.output and "sentiment" in result.output


def test_fit_eval_predict(model_dir, sentiment_data):
    config = sentiment_data / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(model_dir("bert"), sentiment_data)))
    run_dir = sentiment_data / "cli-run"
    fitted = invoke("fit", str(config), "--set", "trainer.epochs=1", "--output", str(run_dir))
    assert fitted.exit_code == 0, fitted.output
    assert "trainable parameters: 64 (saved: 64)" in fitted.output
    assert (run_dir / "prompt.safetensors").is_file()

    evaluated = invoke("eval", str(run_dir), "--data", str(sentiment_data / "test.jsonl"))
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert 0.0 <= metrics["accuracy"] <= 1.0

    out = sentiment_data / "predictions.jsonl"
    predicted = invoke(
        "predict", str(run_dir), "--input", str(sentiment_data / "test.jsonl"), "--output", str(out)
    )
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24
    assert rows[0]["prediction"] in {"positive", "negative"}
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-5


def test_threads_sets_the_cpu_threads_torch_computes_with(model_dir, sentiment_data):
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    config = sentiment_data / "run.yaml"
    hard = "<x> it was [MASK]."
    config.write_text(yaml.safe_dump(run_config(model_dir("bert"), sentiment_data, template=hard)))
    zero_shot = ["--set", "trainer.epochs=0", "--set", "trainable=[]"]
    try:
        result = invoke("fit", str(config), *zero_shot, "--threads", str(wanted))
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
    assert invoke("fit", str(config), "--threads", "0").exit_code == 2  # at least 1


@pytest.mark.parametrize("threads", ["0", "-3", "abc", "99999999999999999999"])
def test_threads_out_of_range_is_a_clear_error(model_dir, sentiment_data, threads, monkeypatch):
    import torch

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    config = sentiment_data / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(model_dir("bert"), sentiment_data)))
    before = torch.get_num_threads()
    result = invoke("template", "search", str(config), "--threads", threads)
    assert result.exit_code == 2 and "--threads" in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert torch.get_num_threads() == before


def test_threads_beyond_the_cpus_says_how_many_there_are(model_dir, sentiment_data, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    config = sentiment_data / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(model_dir("bert"), sentiment_data)))
    result = invoke("fit", str(config), "--threads", "5")
    assert result.exit_code == 2
    assert "error: --threads 5: this machine has 4 CPU(s); give at most 4." in result.output
    assert not (sentiment_data / "run").exists()


def test_fit_with_an_unknown_key_fails_early(sentiment_data):
    config = sentiment_data / "bad.yaml"
    config.write_text(
        yaml.safe_dump({**run_config(sentiment_data, sentiment_data), "trainr": {"epochs": 1}})
    )
    result = invoke("fit", str(config))
    assert result.exit_code == 2
    assert "trainr: unknown key (did you mean 'trainer'?)" in result.output


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    result = invoke("eval", str(tmp_path), "--data", "x.jsonl")
    assert result.exit_code == 2 and "is not a promptkit run" in result.output


def test_user_mistakes_are_one_line_errors_without_tracebacks(model_dir, sentiment_data):
    good = run_config(model_dir("bert"), sentiment_data)
    cases = {
        "typo.yaml": ({**good, "backbone": {"name": str(model_dir("bert")) + "x"}}, "no such"),
        "list.yaml": ([1, 2], "a mapping of keys to values, not a list"),
        "jinja.yaml": ({**good, "template": "{{ 1/0 }} <x> [P1] [MASK]"}, "ZeroDivisionError"),
        "lr.yaml": ({**good, "trainer": {"lr": {"prompts": -1}}}, "trainer.lr.prompts"),
        "slots.yaml": ({**good, "template": "[P*5000] <x> [MASK]"}, "more than the 1024"),
        "noinput.yaml": ({**good, "template": "It was [MASK]."}, "no input slot"),
        "long.yaml": ({**good, "max_length": 4096}, "beyond the 128 positions"),
    }
    for name, (config, message) in cases.items():
        path = sentiment_data / name
        path.write_text(yaml.safe_dump(config))
        result = invoke("fit", str(path), "--output", str(sentiment_data / "runs" / name))
        assert result.exit_code == 2, (name, result.output)
        assert message in result.output and "Traceback" not in result.output, name
    (sentiment_data / "latin.yaml").write_bytes(b"template: caf\xe9")
    assert "not UTF-8" in invoke("fit", str(sentiment_data / "latin.yaml")).output
    bad_set = invoke("fit", str(sentiment_data / "lr.yaml"), "--set", "trainer.epochs=[1")
    assert bad_set.exit_code == 2 and "not valid YAML" in bad_set.output


def test_fit_into_a_folder_of_other_files_keeps_them(model_dir, sentiment_data):
    config = sentiment_data / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(model_dir("bert"), sentiment_data)))
    before = sorted(p.name for p in sentiment_data.iterdir())
    for extra in ([], ["--overwrite"]):
        result = invoke("fit", str(config), "--output", str(sentiment_data), *extra)
        assert result.exit_code == 2 and "holds no promptkit run" in result.output
    assert sorted(p.name for p in sentiment_data.iterdir()) == before


def test_debug_shows_the_traceback(sentiment_data):
    result = runner.invoke(app, ["--debug", "fit", str(sentiment_data / "missing.yaml")])
    assert result.exit_code != 0 and isinstance(result.exception, Exception)
    assert "no such config file" in str(result.exception)
