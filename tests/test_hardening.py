"""A careless user's mistakes: each is a clear promptkit error, raised early, and no user
file is lost (run folders, resuming, damaged runs, the API's arguments, CLI paths)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import run_config, sentiment_rows
from safetensors.torch import save_file
from typer.testing import CliRunner
from vision_helpers import TIMM_MODELS, save_hf_vit, vision_config, write_images

from promptkit import cli
from promptkit.backbone.loading import load_backbone
from promptkit.core import hub
from promptkit.core.run_folder import RunFolder
from promptkit.errors import (
    BackboneMismatchError,
    ConfigError,
    DataError,
    TemplateError,
    TrainingError,
)
from promptkit.runs.config import load_config, validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run
from promptkit.text.model import PromptModel
from promptkit.text.template import check_input_slot, resolve_template
from promptkit.vision.config import VisionModelConfig
from promptkit.vision.model import build_vision_model

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory):
    """A finished one-epoch run (copy it before damaging it) and its data folder."""
    data = tmp_path_factory.mktemp("data")
    for name, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2)):
        lines = (json.dumps(r) + "\n" for r in sentiment_rows(n, seed))
        (data / f"{name}.jsonl").write_text("".join(lines))
    config = run_config(model_dir("bert"), data, trainer={"epochs": 1, "progress": False})
    (data / "run.yaml").write_text(yaml.safe_dump(config))
    return fit(validate_config(config)).run_dir, data


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run, free to damage."""
    return shutil.copytree(trained[0], tmp_path / "run")


# -- run folders ------------------------------------------------------------------------


def test_clear_keeps_the_users_files_in_resume(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.mark("finished")
    run.save_resume({"x": 1})
    notes = run.file("resume/NOTES.txt")
    notes.write_text("mine")
    run.prepare(resume=False, overwrite=True)
    assert notes.read_text() == "mine" and not run.file(run.RESUME).exists()
    notes.unlink()
    run.clear()
    assert not run.file("resume").exists()  # promptkit's own, now empty: removed


def test_a_foreign_promptkit_json_is_not_a_run(tmp_path):
    (tmp_path / "promptkit.json").write_text('{"my": "settings"}')
    (tmp_path / "config.yaml").write_text("my own config")
    run = RunFolder(tmp_path)
    assert not run.is_run()
    with pytest.raises(ConfigError, match="holds no promptkit run"):
        run.check(resume=False, overwrite=True)
    assert (tmp_path / "config.yaml").read_text() == "my own config"


def test_resume_and_overwrite_conflict(tmp_path):
    with pytest.raises(ConfigError, match="give one of them"):
        RunFolder(tmp_path).check(resume=True, overwrite=True)


def test_resume_refuses_a_changed_config_but_takes_new_rates(trained, run_copy):
    config = yaml.safe_load((trained[1] / "run.yaml").read_text())
    config["output_dir"] = str(run_copy)
    RunFolder(run_copy).mark("training")  # as if stopped: its resume state is there
    changed = {**config, "template": "<x> [P1] [MASK].", "trainer": {"batch_size": 4}}
    with pytest.raises(ConfigError, match=r"differ from its config.yaml: template, trainer.batch"):
        fit(validate_config(changed), resume=True)
    faster = {**config, "trainer": {**config["trainer"], "lr": {"prompts": 0.1}}}
    RunFolder(run_copy).check_resumed_config(validate_config(faster).model_dump(mode="json"))


def test_damaged_run_files_are_named(trained, run_copy):
    run = RunFolder(run_copy)
    document = json.loads(run.file(run.RECIPE).read_text())
    damages = (
        {**document, "recipe": {**document["recipe"], "extra": 1}},
        {**document, "backbone": "x"},
        {**document, "backbone": {"name": "x"}},
    )
    for damaged in damages:
        run.file(run.RECIPE).write_text(json.dumps(damaged))
        with pytest.raises(ConfigError, match="promptkit.json is damaged"):
            load_run(run_copy)
    for marker in ("garbage", "[1]"):
        run.file(run.MARKER).write_text(marker)
        with pytest.raises(ConfigError, match="promptkit-run is damaged"):
            run.check(resume=True, overwrite=False)
    run.file(run.METRICS).write_text("{not json\n")
    with pytest.raises(ConfigError, match="metrics.jsonl is damaged"):
        run.read_metrics()


def test_eval_names_a_damaged_or_missing_config_yaml(trained, run_copy):
    data = str(trained[1] / "test.jsonl")
    config = RunFolder(run_copy).file(RunFolder.CONFIG)
    for text, message in (("a: [1", "config.yaml is damaged"), ("[1, 2]", "not a mapping")):
        config.write_text(text)
        result = invoke("eval", str(run_copy), "--data", data)
        assert result.exit_code == 2 and message in result.output, result.output
    config.unlink()
    result = invoke("eval", str(run_copy), "--data", data)
    assert result.exit_code == 2 and "config.yaml is missing" in result.output


# -- fit and its arguments --------------------------------------------------------------


def test_too_little_data_to_hold_out_validation(model_dir, sentiment_data):
    rows = ({"text": "great", "label": 1}, {"text": "bad", "label": 0})
    (sentiment_data / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = run_config(model_dir("bert"), sentiment_data)
    config["data"] = {**config["data"], "train": str(sentiment_data / "two.jsonl")}
    del config["data"]["validation"]
    with pytest.raises(DataError, match=r"too small to hold out.*give a data.validation"):
        fit(validate_config(config))


def test_backbone_given_to_fit_is_checked(model_dir, sentiment_data):
    config = run_config(model_dir("bert"), sentiment_data, trainer={"epochs": 1})
    with pytest.raises(BackboneMismatchError, match="not the one backbone.name names"):
        fit(validate_config(config), backbone=load_backbone(str(model_dir("roberta"))))
    with pytest.raises(ConfigError, match="not a int"):
        fit(validate_config(config), backbone=5)
    result = fit(validate_config(config), backbone=str(model_dir("bert")))
    assert load_run(result.run_dir).classes == ["positive", "negative"]


def test_load_checks_its_arguments(trained):
    with pytest.raises(ConfigError, match="device 'tpu' cannot be used here"):
        load_run(trained[0], device="tpu")
    with pytest.raises(ConfigError, match="backbone= takes a loaded backbone"):
        load_run(trained[0], backbone=5)


def test_load_config_checks_its_arguments(trained):
    path = trained[1] / "run.yaml"
    for bad, message in (({}, "validate_config"), (None, "not a NoneType")):
        with pytest.raises(ConfigError, match=message):
            load_config(bad)
    for overrides in ("trainer.epochs=5", [5], {"trainer.epochs": 5}):
        with pytest.raises(ConfigError, match="list of 'KEY=VALUE' strings"):
            load_config(path, overrides)


def test_a_key_given_twice_in_yaml_is_named(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("template: a\ntrainer:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"'epochs' is given twice \(first on line 3\)"):
        load_config(path)


# -- the command line -------------------------------------------------------------------


def test_fit_output_that_is_a_file(trained):
    taken = trained[1] / "train.jsonl"
    for output in (taken, taken / "run"):
        result = invoke("fit", str(trained[1] / "run.yaml"), "--output", str(output))
        assert result.exit_code == 2 and "is a file" in result.output, result.output
    assert taken.read_text().startswith("{")


def test_predict_output_paths_are_checked(trained):
    run_dir, data = trained
    recipe = (run_dir / "promptkit.json").read_text()
    cases = (
        (run_dir / "promptkit.json", "is a file of the run"),
        (run_dir / "resume" / "x.jsonl", "is a file of the run"),
        (data, "is a folder"),
        (data / "train.jsonl" / "x.jsonl", "nothing can be written under it"),
    )
    for output, message in cases:
        args = ("--input", str(data / "test.jsonl"), "--output", str(output), "--overwrite")
        result = invoke("predict", str(run_dir), *args)
        assert result.exit_code == 2 and message in result.output, (output, result.output)
    assert (run_dir / "promptkit.json").read_text() == recipe


def test_predict_refuses_input_columns_it_would_replace(trained, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "great", "prediction": "mine"}) + "\n")
    args = ("predict", str(trained[0]), "--input", str(rows), "--output", str(tmp_path / "o"))
    result = invoke(*args)
    assert result.exit_code == 2 and "['prediction']" in result.output, result.output


def test_template_check_flags_a_template_without_input():
    for template, message in (("", "template is empty"), ("null_promt", "no input slot")):
        result = invoke("template", "check", template)
        assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(TemplateError, match="No catalog template is named 'null_promt'"):
        check_input_slot(resolve_template("null_promt"), "null_promt")


def test_an_interrupt_before_training_says_nothing_was_saved(trained, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("promptkit.runs.fitting.fit", interrupted)
    args = ("fit", str(trained[1] / "run.yaml"), "--output", str(tmp_path / "new"))
    result = invoke(*args)
    assert result.exit_code == 130 and "nothing was saved yet" in result.output


def test_fit_reports_a_config_error_before_loading_torch(tmp_path):
    (tmp_path / "bad.yaml").write_text("seed: 1\nseed: 2\n")
    code = (
        "import sys; from promptkit.cli import app\n"
        "try: app(['fit', sys.argv[1]])\n"
        "except SystemExit as e: assert e.code == 2 and 'torch' not in sys.modules, 'torch'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bad.yaml")], capture_output=True, text=True
    )
    assert done.returncode == 0 and "'seed' is given twice" in done.stderr, done.stderr


# -- settings that would be ignored, or leak the answer ---------------------------------


def test_a_rate_for_a_group_that_does_not_train(tmp_path):
    config = run_config(tmp_path, tmp_path, trainer={"lr": {"prompts": 0.1, "head": 0.1}})
    with pytest.raises(ConfigError, match=r"rate for \['head'\].*does not train them"):
        validate_config(config)
    validate_config({**config, "preset": "prompt_tuning", "trainer": {}})  # the preset's own


def test_a_template_that_reads_the_label_is_refused(model_dir, sentiment_data):
    for template, column in (("<x> {{ label }} [P1] [MASK]", "text"), ("<x> [P1] [MASK]", "label")):
        config = run_config(
            model_dir("bert"), sentiment_data, template=template, inputs={"x": column}
        )
        with pytest.raises(ConfigError, match="reads the label column 'label'"):
            fit(validate_config(config))


def test_section_errors_name_no_pydantic_internals(tmp_path):
    config = run_config(tmp_path, tmp_path)
    cases = (
        ({"head": "verbalizer"}, "head: write a section (a mapping of keys, its type one of"),
        ({"prompts": ["input"]}, "prompts: write a section (a mapping of keys, its placement"),
        ({"head": {"verbalizer": ["a"]}}, "head.verbalizer: Input should be a valid string, or"),
    )
    for extra, message in cases:
        with pytest.raises(ConfigError) as raised:
            validate_config({**config, **extra})
        assert message in str(raised.value) and "tag_of" not in str(raised.value)
        assert "dict[" not in str(raised.value)


def test_unknown_labels_are_not_blamed_on_a_verbalizer(model_dir, sentiment_data):
    config = run_config(model_dir("bert-encoder"), sentiment_data, template="<x>")
    config.update(head={"type": "classifier", "classes": ["a", "b"]}, trainable=["head"])
    with pytest.raises(DataError, match=r"head.verbalizer, head.classes, or data.classes"):
        fit(validate_config(config))


def test_float16_on_the_cpu_is_refused_and_divergence_hints_at_causes(
    model_dir, sentiment_data, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = run_config(model_dir("bert"), sentiment_data)
    config["backbone"]["dtype"] = "float16"
    with pytest.raises(ConfigError, match="float16 trains on a GPU only"):
        fit(validate_config(config))
    forward = PromptModel.forward
    monkeypatch.setattr(PromptModel, "forward", lambda self, b: forward(self, b) * float("nan"))
    config = run_config(model_dir("bert"), sentiment_data, trainable=["prompts", "bias"])
    message = r"--set trainer.lr.prompts=0.001 --set trainer.lr.bias=.*NaN.*backbone.dtype"
    with pytest.raises(TrainingError, match=message):
        fit(validate_config(config))


# -- vision -----------------------------------------------------------------------------


def test_vision_backbone_mistakes(tmp_path):
    name, kwargs = TIMM_MODELS["vit"]
    save_file({"bert.embeddings.weight": torch.zeros(2, 2)}, str(tmp_path / "bert.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    hf = str(save_hf_vit(tmp_path / "hf"))
    cases = (
        ({"name": "vit_nope"}, "timm cannot build 'vit_nope'"),
        ({"name": name, "kwargs": {"foo": 1}}, "check the name"),
        (
            {"name": name, "kwargs": kwargs, "checkpoint": str(tmp_path / "bert.safetensors")},
            "does not fit VisionTransformer",
        ),
        ({"name": name, "checkpoint": str(tmp_path / "junk.safetensors")}, "cannot be read"),
        ({"name": hf, "kwargs": {"img_size": 16}}, "takes no backbone.kwargs"),
    )
    for backbone, message in cases:
        recipe = VisionModelConfig.model_validate({"modality": "vision", "backbone": backbone})
        with pytest.raises(ConfigError, match=message):
            build_vision_model(recipe, ["a", "b"])


def test_pretrained_weights_offline_fail_at_once(monkeypatch):
    monkeypatch.setattr(hub, "reachable", lambda: False)
    backbone = {"name": "vit_tiny_patch16_224", "pretrained": True}
    recipe = VisionModelConfig.model_validate({"modality": "vision", "backbone": backbone})
    with pytest.raises(ConfigError, match="hub, which cannot be reached"):
        build_vision_model(recipe, ["a", "b"])


def test_vision_data_mistakes(tmp_path):
    train = write_images(tmp_path / "train", 10)
    result = fit(
        validate_config(
            vision_config(train, None, tmp_path / "run", trainer={"epochs": 1, "progress": False})
        )
    )
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for item, message in (
        (str(tmp_path / "missing.png"), "missing.png cannot be read as an image"),
        (str(tmp_path / "broken.png"), "broken.png cannot be read as an image"),
        ({"text": "a"}, "has no 'image' field"),
    ):
        with pytest.raises(DataError, match=message):
            result.predictor.predict([item])
