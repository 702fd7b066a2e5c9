"""The run folder: where fit may write, the lock, atomic files, resuming a finished run,
and runs saved by an earlier promptkit."""

import json
import multiprocessing
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_config
from safetensors.torch import save_file

from promptkit.core.run_folder import RunFolder
from promptkit.errors import ConfigError, TrainingError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run


def test_fit_refuses_a_folder_that_is_not_a_run(model_dir, sentiment_data):
    """The data folder itself as --output: nothing is deleted, with or without overwrite."""
    before = sorted(p.name for p in sentiment_data.iterdir())
    config = run_config(model_dir("bert"), sentiment_data)
    config["output_dir"] = str(sentiment_data)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not empty and holds no promptkit run"):
            fit(validate_config(config), overwrite=overwrite)
    assert sorted(p.name for p in sentiment_data.iterdir()) == before


def test_fit_writes_into_new_or_empty_folders(model_dir, sentiment_data):
    (sentiment_data / "empty").mkdir()
    for name in ("empty", "new/nested"):
        config = run_config(model_dir("bert"), sentiment_data, trainer={"epochs": 1})
        config["output_dir"] = str(sentiment_data / name)
        fit(validate_config(config))
        run = RunFolder(sentiment_data / name)
        assert run.is_run() and run.status() == "finished"
        assert json.loads(run.file(run.MARKER).read_text())["status"] == "finished"


def test_resume_of_a_finished_run_says_so(model_dir, sentiment_data):
    config = validate_config(run_config(model_dir("bert"), sentiment_data, trainer={"epochs": 1}))
    fit(config)
    with pytest.raises(TrainingError, match="finished run: there is nothing to resume"):
        fit(config, resume=True)


def _hold_lock(path, ready, release):
    with RunFolder(path).lock():
        ready.set()
        release.wait(30)


def test_a_second_writer_is_refused(model_dir, sentiment_data):
    path = sentiment_data / "run"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        config = validate_config(run_config(model_dir("bert"), sentiment_data))
        with pytest.raises(ConfigError, match="being written by another promptkit process"):
            fit(config)
    finally:
        release.set()
        holder.join(30)
    assert not RunFolder(path).is_run()  # the refused fit wrote nothing


def test_overwrite_removes_only_promptkits_files(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.mark("finished")
    run.write_config({"a": 1})
    run.append_metrics({"epoch": 1})
    run.save_resume({"x": 1})
    (run.path / "notes.txt").write_text("mine")
    run.prepare(resume=False, overwrite=True)
    assert sorted(p.name for p in run.path.iterdir()) == [run.MARKER, "notes.txt"]
    assert run.status() == "training"


def test_metrics_and_config_are_replaced_whole(tmp_path):
    run = RunFolder(tmp_path)
    for epoch in range(3):
        run.append_metrics({"epoch": epoch})
    assert [m["epoch"] for m in run.read_metrics()] == [0, 1, 2]
    run.write_config({"output_dir": "x", "nested": {"a": [1, 2]}})
    assert run.read_config() == {"output_dir": "x", "nested": {"a": [1, 2]}}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def test_a_run_saved_in_the_first_format_still_loads(model_dir, sentiment_data):
    """Format 1 kept every head and placement key in one flat section."""
    result = fit(validate_config(run_config(model_dir("bert"), sentiment_data)))
    path = result.run_dir / RunFolder.RECIPE
    document = json.loads(path.read_text())
    document["format"] = 1
    document["recipe"]["head"].update({"pool": "cls", "classes": None, "dropout": 0.1})
    document["recipe"]["prompts"]["layers"] = "all"
    del document["backbone"]["fingerprint_scheme"]  # it hashed the embeddings only
    document["backbone"]["fingerprint"] = result.predictor.model.backbone.fingerprint(scheme=1)
    path.write_text(json.dumps(document))
    texts = ["the movie was great", "boring"]
    assert load_run(result.run_dir).predict(texts) == result.predictor.predict(texts)


def test_a_damaged_run_folder_is_named(model_dir, sentiment_data):
    result = fit(
        validate_config(run_config(model_dir("bert"), sentiment_data, trainer={"epochs": 1}))
    )
    run = RunFolder(result.run_dir)
    prompt, recipe = run.file(run.PROMPT), run.file(run.RECIPE)
    good_prompt, good_recipe = prompt.read_bytes(), recipe.read_text()
    prompt.write_bytes(good_prompt[: len(good_prompt) // 2])
    with pytest.raises(ConfigError, match="prompt.safetensors cannot be read.*damaged"):
        load_run(run.path)
    for bad, message in (
        ({"prompts.table": torch.full((2, 32), float("nan"))}, "non-finite values"),
        ({"prompts.table": torch.zeros(3, 32)}, "has shape"),
        ({"prompts.other": torch.zeros(2, 32)}, "do not fit this model"),
    ):
        save_file(bad, str(prompt))
        with pytest.raises(ConfigError, match=message):
            load_run(run.path)
    prompt.write_bytes(good_prompt)
    recipe.write_text(good_recipe[:40])
    with pytest.raises(ConfigError, match="promptkit.json is damaged"):
        load_run(run.path)
    recipe.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="promptkit.json is damaged"):
        load_run(run.path)


_SAVE_THAT_HANGS = """
import sys, time
from pathlib import Path
from promptkit.core.run_folder import RunFolder, atomic_write

run = RunFolder(sys.argv[1])
run.mark("training")

def write(path):
    path.write_bytes(b"half a prompt")
    Path(sys.argv[2]).touch()  # the save is under way
    time.sleep(600)

atomic_write(run.file(run.PROMPT), write)
"""


def test_a_save_killed_midway_leaves_a_temp_that_the_next_fit_removes(tmp_path):
    run = RunFolder(tmp_path / "run")
    started = tmp_path / "started"
    saving = subprocess.Popen([sys.executable, "-c", _SAVE_THAT_HANGS, str(run.path), str(started)])
    try:
        while not started.exists():
            assert saving.poll() is None, "the save ended before it was killed"
            time.sleep(0.05)
    finally:
        saving.kill()
        saving.wait()
    (run.path / ".prompt.safetensors.mine").write_text("not promptkit's")
    (left,) = run.leftover_temps()
    assert left.name.startswith(".prompt.safetensors.") and left.read_bytes() == b"half a prompt"
    run.prepare(resume=False, overwrite=True)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == [".prompt.safetensors.mine", run.MARKER]
