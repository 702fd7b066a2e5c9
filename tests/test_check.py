"""`promptkit check`: a config checked without training, on tiny models and data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import make_model, run_config
from typer.testing import CliRunner
from vision_helpers import vision_config, write_images

from promptkit.cli import app
from promptkit.runs.check import check_config

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def invoke(*args: str):
    return runner.invoke(app, ["check", *args], catch_exceptions=False)


def test_a_good_config_is_reported_and_passes(model_dir, sentiment_data):
    path = write_config(sentiment_data, run_config(model_dir("bert"), sentiment_data))
    report = check_config(path)
    assert report.ok, report.problems
    assert report.sections["data"] == [
        "classes (2): negative, positive",
        "train: 64 examples (negative 32, positive 32)",
        "validation: 24 examples (negative 12, positive 12)",
        "test: 24 examples (negative 12, positive 12)",
    ]
    assert report.sections["label words"] == [
        "negative: terrible -> terrible (1 token); bad -> bad (1 token)",
        "positive: great -> great (1 token); good -> good (1 token)",
    ]
    parameters = sum(p.numel() for p in make_model("bert").parameters())
    assert (
        f"{parameters:,} parameters x 4 bytes (float32) = {parameters * 4 / 2**20:.2f} MiB "
        "for the weights" in report.sections["backbone"][1]
    )
    assert len(report.rendered) == 3
    texts = ["".join(s.text for s in segments) for segments in report.rendered]
    assert texts[0].startswith("the movie was ")


def test_the_cli_prints_the_report_and_exits_0(model_dir, sentiment_data):
    path = write_config(sentiment_data, run_config(model_dir("bert"), sentiment_data))
    result = invoke(str(path))
    assert result.exit_code == 0, result.output
    assert "train: 64 examples (negative 32, positive 32)" in result.output
    assert "the movie was " in result.output and "<P1><P2> <MASK>." in result.output
    assert "ok: the config is ready to run" in result.output


def test_the_cli_lists_every_problem_and_exits_2(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data)
    config["head"] = {"verbalizer": {"positive": ["great", "superb"], "negative": ["bad"]}}
    config["data"]["label_map"] = {"1": "positive", "0": "negative"}
    path = write_config(sentiment_data, config)
    result = invoke(str(path))
    assert result.exit_code == 2
    assert "problem: label words: 'superb' (positive) is not in the tokenizer's" in result.output
    assert "train: 64 examples" in result.output  # the other checks still ran


def test_a_missing_column_and_a_bad_key(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data, inputs={"x": "sentence"})
    report = check_config(write_config(sentiment_data, config))
    assert len(report.problems) == 1
    assert report.problems[0].startswith("data: ") and "no column 'sentence'" in report.problems[0]
    config["trainer"]["epoch"] = 3
    report = check_config(write_config(sentiment_data, config))
    assert (
        report.problems[0].startswith("config: ") and "did you mean 'epochs'" in report.problems[0]
    )


def _with_an_empty_cell(folder: Path) -> None:
    path = folder / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[4]["text"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_invalid_rows_are_a_problem_or_counted_when_dropped(model_dir, sentiment_data):
    _with_an_empty_cell(sentiment_data)
    config = run_config(model_dir("bert"), sentiment_data)
    report = check_config(write_config(sentiment_data, config))
    assert report.problems == [
        f"data: {sentiment_data / 'train.jsonl'}: row 5, column 'text': empty (absent). Fix the "
        "data, or set `data.invalid: drop` to leave such rows out (1 rows in all)."
    ]
    report = check_config(write_config(sentiment_data, config), ["data.invalid=drop"])
    assert report.ok, report.problems
    assert "left out 1 of 64 rows" in report.sections["data"][0]
    assert "train: 63 examples (negative 31, positive 32)" in report.sections["data"]


def test_a_vision_config_checks_its_images_and_backbone(tmp_path):
    train = write_images(tmp_path / "train", 6)
    config = vision_config(train, None, tmp_path / "run")
    report = check_config(write_config(tmp_path, config))
    assert report.ok, report.problems
    assert report.sections["data"][0] == "classes (2): bright, dark"
    assert " parameters x 4 bytes (float32)" in report.sections["backbone"][1]
    assert "label words" not in report.sections and not report.rendered


def test_paths_are_read_from_the_working_directory(model_dir, sentiment_data, monkeypatch):
    """One rule for every path of a config: relative to where promptkit runs, not to the
    config file. A path that is relative to the config file only is not found."""
    (sentiment_data / "configs").mkdir()
    (sentiment_data / "words.yaml").write_text(
        yaml.safe_dump({"positive": ["great"], "negative": ["bad"]})
    )
    backbone = model_dir("bert")
    os.symlink(backbone, sentiment_data / "tiny-bert")
    config = run_config(Path("tiny-bert"), Path("."), head={"verbalizer": "words.yaml"})
    config["output_dir"] = "runs/here"
    path = write_config(sentiment_data / "configs", config)
    monkeypatch.chdir(sentiment_data)
    report = check_config(path)
    assert report.ok, report.problems
    shown = "\n".join(report.sections["config"])
    for key, value in (
        ("data.train", sentiment_data / "train.jsonl"),
        ("backbone.name", backbone.resolve()),  # the link, followed
        ("head.verbalizer", sentiment_data / "words.yaml"),
        ("output_dir", sentiment_data / "runs" / "here"),
    ):
        assert f"{key}: {value}" in shown

    from promptkit.runs.config import load_config

    loaded = load_config(path)  # the paths a saved run reads again are kept absolute
    assert loaded.head.verbalizer == str(sentiment_data / "words.yaml")
    assert loaded.backbone.name == str(backbone.resolve())

    monkeypatch.chdir(sentiment_data / "configs")  # relative to the config: not found
    report = check_config("run.yaml")
    configs = sentiment_data / "configs"
    assert (
        f"data.train: {configs / 'train.jsonl'} (no such file or folder)"
        in (report.sections["config"])
    )
    assert report.problems[0] == "recipe: words.yaml: no such verbalizer file."
    assert report.problems[1].startswith("backbone: backbone 'tiny-bert': no such local folder")


@pytest.mark.slow
def test_the_sentiment_example_with_smollm2(monkeypatch):
    if not (ROOT / ".assets" / "smollm2-135m").is_dir():
        pytest.skip("needs .assets (make test fetches them)")
    monkeypatch.chdir(ROOT)
    result = invoke("examples/sentiment/ptuning_cloze.yaml")
    assert result.exit_code == 0, result.output
    assert "134.5M parameters x 4 bytes (float32) = 0.50 GiB" in result.output
    assert "positive: great -> Ġgreat (1 token); good -> Ġgood (1 token)" in result.output
    assert "train: 64 examples (positive 32, negative 32)" in result.output
    assert "It was <P1><P2> <MASK>." in result.output


def test_the_backbone_is_checked_whatever_the_recipe_says(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data, template="<x> [bogus] [MASK]")
    config["backbone"]["name"] = str(sentiment_data / "no-model")
    report = check_config(write_config(sentiment_data, config))
    assert [p.split(":")[0] for p in report.problems] == ["recipe", "backbone"]
    assert "no such folder" in report.problems[1]


def test_a_vision_backbone_that_fit_cannot_load_is_a_problem(tmp_path, model_dir):
    train = write_images(tmp_path / "train", 6)
    config = vision_config(train, None, tmp_path / "run")
    config["backbone"]["checkpoint"] = str(tmp_path / "missing.safetensors")
    report = check_config(write_config(tmp_path, config))
    assert report.problems == [
        f"backbone: backbone.checkpoint {tmp_path / 'missing.safetensors'}: no such file"
    ]
    config["backbone"]["checkpoint"] = str(model_dir("bert") / "model.safetensors")
    report = check_config(write_config(tmp_path, config))
    assert len(report.problems) == 1 and "does not fit VisionTransformer" in report.problems[0]
    config["backbone"] = {"name": str(model_dir("bert"))}  # a transformers model, not a ViT
    report = check_config(write_config(tmp_path, config))
    assert report.problems == [
        f"backbone: backbone {model_dir('bert')} is a transformers 'bert' model; VPT serves "
        "the model types dinov2, dinov2_with_registers, vit."
    ]


def test_data_shows_as_it_is_on_one_line_and_cannot_drive_the_terminal(model_dir, sentiment_data):
    """Markup-looking text is shown as written, a terminal escape in the data is shown as an
    escape (not sent to the terminal), and a long example is not cut into lines."""
    text = "[bold]the[/bold] <x> [P1] [MASK] \x1b[31mred 🎬 " + "movie " * 30
    rows = [{"text": text, "label": i % 2} for i in range(8)]
    (sentiment_data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = run_config(model_dir("bert"), sentiment_data, template=r"\[b\] <x> [P1] [MASK].")
    result = invoke(str(write_config(sentiment_data, config)))
    assert result.exit_code == 0, result.output
    shown = text.replace("\x1b", "\\x1b")
    assert f"  [b] {shown} <P1> <MASK>.\n" in result.output
    assert "\x1b" not in result.output


def test_a_huge_batch_size_is_a_config_problem(model_dir, sentiment_data):
    """Not "ready to run" (fit stopped with an internal error)."""
    path = write_config(sentiment_data, run_config(model_dir("bert"), sentiment_data))
    report = check_config(path, ["trainer.batch_size=99999999999999999999999"])
    assert len(report.problems) == 1
    assert "trainer.batch_size: Input should be less than 2147483648" in report.problems[0]


def test_the_run_folder_is_checked_as_fit_checks_it(model_dir, sentiment_data):
    from promptkit.core.run_folder import RunFolder

    config = run_config(model_dir("bert"), sentiment_data)
    path = write_config(sentiment_data, config)
    (sentiment_data / "a-file").write_text("mine")
    report = check_config(path, [f"output_dir={sentiment_data / 'a-file'}"])
    assert report.problems == [
        f"config: output_dir {sentiment_data / 'a-file'} is a file: give the path of a folder."
    ]
    report = check_config(path, [f"output_dir={sentiment_data}"])  # the data's folder
    assert (
        len(report.problems) == 1
        and "is not empty and holds no promptkit run" in (report.problems[0])
    )
    RunFolder(sentiment_data / "run").prepare(resume=False, overwrite=False)
    report = check_config(path)
    assert report.ok, report.problems
    assert (
        "output_dir holds an earlier run: fit continues it with --resume"
        in (report.sections["config"][-1])
    )


def test_the_split_names_of_a_built_in_data_set_are_not_shown_as_paths(tmp_path):
    config = vision_config(tmp_path, None, tmp_path / "run")
    config["data"] = {"source": "fashion_mnist", "train": "train", "path": str(tmp_path)}
    report = check_config(write_config(tmp_path, config))
    shown = "\n".join(report.sections["config"])
    assert "data.train" not in shown and f"data.path: {tmp_path}" in shown


def test_what_fit_refuses_before_loading_is_a_problem(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data, trainable=[])
    report = check_config(write_config(sentiment_data, config))
    assert any("trainable is [], so nothing trains" in p for p in report.problems)
    config["trainer"] = {"epochs": 0}  # a zero-shot run, but [P1][P2] start at random
    report = check_config(write_config(sentiment_data, config))
    assert any("its scores would be chance" in p for p in report.problems)
