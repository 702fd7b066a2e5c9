"""Whole `promptkit fit` processes: real signals and kills at several points, then --resume,
end where the uninterrupted run ends; two ranks under `accelerate launch` equal one process
with the same global batch. Marked slow: each test starts several Python processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_config, sentiment_rows
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "promptkit", "fit", str(config), *extra]


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def outcome(run_dir: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return metrics, load_file(str(run_dir / "prompt.safetensors"))


def assert_same(got: Path, want: Path, atol: float = 0.0, loss_rtol: float = 0.0) -> None:
    (got_metrics, got_prompt), (want_metrics, want_prompt) = outcome(got), outcome(want)
    assert [m.keys() for m in got_metrics] == [m.keys() for m in want_metrics]
    for a, b in zip(got_metrics, want_metrics, strict=True):
        for key, value in b.items():
            if key == "train_loss":
                assert a[key] == pytest.approx(value, abs=atol, rel=loss_rtol), key
            elif isinstance(value, float):
                assert a[key] == pytest.approx(value, abs=atol, rel=0), key
            else:
                assert a[key] == value, key
    assert got_prompt.keys() == want_prompt.keys()
    for key in want_prompt:
        torch.testing.assert_close(got_prompt[key], want_prompt[key], atol=atol, rtol=0)


def run_until(config: Path, line: str, sig: int, log: Path) -> int:
    """Start a fit, send ``sig`` once train.log shows ``line``; the exit code."""
    process = subprocess.Popen(command(config), env=ENV, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and line in log.read_text():
            process.send_signal(sig)
            break
        time.sleep(0.01)
    return process.wait(120)


@pytest.fixture
def runs(model_dir, sentiment_data):
    """A config (4 steps an epoch, a long validation) and the uninterrupted run's folder."""
    with open(sentiment_data / "validation.jsonl", "w") as f:  # long enough to signal into
        f.writelines(json.dumps(r) + "\n" for r in sentiment_rows(3000, 1))
    base = run_config(
        model_dir("bert"),
        sentiment_data,
        trainable=["prompts", "bias"],
        trainer={"epochs": 3, "batch_size": 16, "progress": False, "log_every": 1},
    )
    straight = sentiment_data / "straight"
    reference = write_config(
        sentiment_data / "straight.yaml", {**base, "output_dir": str(straight)}
    )
    subprocess.run(command(reference), env=ENV, check=True, stderr=subprocess.DEVNULL)
    interrupted = sentiment_data / "interrupted"
    config = write_config(sentiment_data / "run.yaml", {**base, "output_dir": str(interrupted)})
    return config, interrupted, straight


@pytest.mark.parametrize(
    ("line", "sig", "code"),
    [
        ("epoch 1, step 2:", signal.SIGINT, 128 + signal.SIGINT),  # mid-epoch
        ("epoch 2: validating", signal.SIGTERM, 128 + signal.SIGTERM),  # mid-validation
        ("epoch 1, step 3:", signal.SIGKILL, -signal.SIGKILL),  # mid-epoch, no warning
        ("epoch 1: validating", signal.SIGKILL, -signal.SIGKILL),  # mid-validation
        ("epoch 2: train loss", signal.SIGKILL, -signal.SIGKILL),  # between the saves
    ],
)
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(runs, line, sig, code):
    config, interrupted, straight = runs
    assert run_until(config, line, sig, interrupted / "train.log") == code
    resumed = subprocess.run(
        command(config, "--resume"), env=ENV, stderr=subprocess.PIPE, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same(interrupted, straight)
    finished = subprocess.run(command(config, "--resume"), env=ENV, capture_output=True, text=True)
    assert finished.returncode == 2 and "finished run" in finished.stderr


def launched(config: Path, *options: str, resume: bool = False) -> list[str]:
    """The command that runs a fit on two processes under `accelerate launch`, with the
    launcher's ``options``."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *options,
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "promptkit",
        "fit",
        str(config),
        *(["--resume"] if resume else []),
    ]


def launch(
    config: Path, cwd: Path, *options: str, resume: bool = False
) -> subprocess.CompletedProcess:
    """Run ``launched(config, *options, resume=resume)`` to its end."""
    return subprocess.run(
        launched(config, *options, resume=resume), env=ENV, cwd=cwd, capture_output=True, text=True
    )


def one_process(folder: Path, base: dict) -> Path:
    """Fit ``base`` in one process with batches of 16; the run folder."""
    single = write_config(folder / "single.yaml", {**base, "output_dir": "single"})
    subprocess.run(command(single), env=ENV, cwd=folder, check=True)
    return folder / "single"


def two_processes(folder: Path, base: dict) -> Path:
    """The config of ``base`` on two processes with batches of 8 each."""
    ranks = {**base, "output_dir": "ranks", "trainer": {**base["trainer"], "batch_size": 8}}
    return write_config(folder / "ranks.yaml", ranks)


def assert_like_one_process(ranks: Path, single: Path) -> None:
    # The class log-probabilities, and so the loss, are computed in float32 whatever the
    # backbone's dtype: a mean over batches of 8 rather than 16 rounds within float32's
    # precision for a mean of 16 terms.
    float32_mean = 16 * torch.finfo(torch.float32).eps
    assert_same(ranks, single, atol=1e-10, loss_rtol=float32_mean)
    log = (ranks / "train.log").read_text()
    assert log.count("epoch 2: validating") == 1  # one writer


def same_as_one_process(folder: Path, base: dict, *options: str) -> Path:
    """Fit ``base`` in one process and on two launched with ``options`` (the same global
    batch); assert that both end alike; the launched run's folder."""
    single = one_process(folder, base)
    done = launch(two_processes(folder, base), folder, *options)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_like_one_process(folder / "ranks", single)
    return folder / "ranks"


def float64_run(model_dir, data: Path, **overrides) -> dict:
    # float64: batches of 8 and 16 reduce in another order, and AdamW passes that rounding
    # straight through for gradients far under its eps; in float32 that reaches 1e-5 on some
    # CPUs, in float64 it stays near 1e-14 (the bound in same_as_one_process keeps a wide
    # margin).
    folder = model_dir("bert-nodropout")
    return run_config(
        folder,
        data,
        backbone={"name": str(folder), "dtype": "float64"},
        **{"trainer": {"epochs": 2, "batch_size": 16, "progress": False}, **overrides},
    )


def test_two_ranks_equal_one_process_with_the_same_global_batch(model_dir, sentiment_data):
    base = float64_run(model_dir, sentiment_data, trainable=["prompts", "bias"])
    same_as_one_process(sentiment_data, base, "--multi_gpu")


SHARDED = Path(__file__).parents[1] / "examples" / "accelerate" / "fsdp.yaml"
CLOZE = "<x> it was [P1][P2] [MASK]."


@pytest.mark.parametrize(
    ("template", "prompts", "trainable", "checkpointing"),
    [
        (CLOZE, {"placement": "input"}, ["prompts", "bias"], False),  # BitFit: sharded biases
        ("[P*3] <x> it was [MASK].", {"placement": "prefix", "encoder": "mlp"}, ["prompts"], False),
        (CLOZE, {"placement": "deep", "layers": "all"}, ["prompts"], True),
    ],
    ids=["input-bitfit", "prefix-mlp", "deep-checkpointing"],
)
def test_a_sharded_backbone_trains_as_one_process_does(
    model_dir, sentiment_data, template, prompts, trainable, checkpointing
):
    base = float64_run(
        model_dir,
        sentiment_data,
        template=template,
        prompts=prompts,
        trainable=trainable,
        trainer={
            "epochs": 2,
            "batch_size": 16,
            "progress": False,
            "gradient_checkpointing": checkpointing,
        },
    )
    ranks = same_as_one_process(sentiment_data, base, "--config_file", str(SHARDED))
    log = (ranks / "train.log").read_text()
    held, total = map(int, re.search(r"holds (\d+) of its (\d+) parameters", log).groups())
    assert abs(held - total / 2) < total / 100  # each process holds half the weights
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "promptkit",
            "predict",
            str(ranks),
            "--input",
            str(sentiment_data / "test.jsonl"),
            "--output",
            str(sentiment_data / "out.jsonl"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )  # one process loads what the sharded run saved
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len((sentiment_data / "out.jsonl").read_text().splitlines()) == 24


def test_a_sharded_run_stopped_with_ctrl_c_resumes_to_the_end_of_an_unstopped_one(
    model_dir, sentiment_data
):
    base = float64_run(
        model_dir,
        sentiment_data,
        trainable=["prompts", "bias"],
        trainer={"epochs": 2, "batch_size": 16, "progress": False, "log_every": 1},
    )
    single = one_process(sentiment_data, base)
    config = two_processes(sentiment_data, base)
    process = subprocess.Popen(
        launched(config, "--config_file", str(SHARDED)),
        env=ENV,
        cwd=sentiment_data,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = sentiment_data / "ranks" / "train.log"
    while process.poll() is None and not (log.is_file() and "epoch 1, step 2:" in log.read_text()):
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the launcher and every rank
    process.wait(120)
    resumed = launch(config, sentiment_data, "--config_file", str(SHARDED), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in log.read_text()
    assert_like_one_process(sentiment_data / "ranks", single)
