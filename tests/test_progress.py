"""Progress off a terminal: plain lines on stderr and in the run's log, at the pace asked."""

from __future__ import annotations

import io
import re

import pytest
from conftest import run_config

from promptkit.core import progress
from promptkit.core.progress import Report, Tracker, console_shown, duration, say, timed, track

LINE = re.compile(r"^scoring: (\d+)/5 \((\d+)%\), [\d.hms]+ elapsed, ETA [\d.hms?]+$")


def test_a_line_per_step_with_interval_zero(capsys):
    items = list(track(range(5), "scoring", Report(interval=0)))
    lines = capsys.readouterr().err.splitlines()
    assert items == [0, 1, 2, 3, 4]
    assert [LINE.match(line).group(1, 2) for line in lines] == [
        ("0", "0"),
        ("1", "20"),
        ("2", "40"),
        ("3", "60"),
        ("4", "80"),
        ("5", "100"),
    ]


def test_the_first_and_the_last_line_within_the_interval(capsys):
    list(track(range(5), "scoring", Report(interval=3600)))
    lines = capsys.readouterr().err.splitlines()
    assert [LINE.match(line).group(1) for line in lines] == ["0", "5"]


def test_the_log_gets_the_lines_when_the_console_is_off(capsys):
    kept: list[str] = []
    with Tracker("training", 2, Report(console=False, log=kept.append, interval=0)) as tracker:
        tracker.advance(note="loss 0.5000")
        tracker.advance(note="loss 0.2500")
    assert capsys.readouterr().err == ""
    assert [line.split(",")[0] for line in kept] == [
        "training: 0/2 (0%)",
        "training: 1/2 (50%)",
        "training: 2/2 (100%)",
    ]
    assert kept[2].endswith(", loss 0.2500")


def test_console_shown_false_silences_the_console_not_the_log(capsys):
    kept: list[str] = []
    with console_shown(False):
        say("hello", Report(log=kept.append))
        with timed("loading"):
            pass
    assert capsys.readouterr().err == ""
    assert kept == ["hello"]


def test_timed_says_what_and_how_long(capsys):
    with timed("loading backbone x"):
        pass
    first, last = capsys.readouterr().err.splitlines()
    assert first == "loading backbone x"
    assert re.fullmatch(r"loading backbone x: done in \d\.\ds", last)


def test_in_a_terminal_work_inside_work_shares_the_bar(monkeypatch):
    """rich shows one live bar at a time: the validation inside training adds its line to
    the training's bar, and plain lines go to the log only."""
    from rich.console import Console

    screen = io.StringIO()
    monkeypatch.setattr(progress, "_stderr", Console(file=screen, force_terminal=True))
    kept: list[str] = []
    with Tracker("training", 2, Report(log=kept.append, interval=0), transient=False) as outer:
        outer.advance(note="loss 0.5000")
        assert list(track(range(3), "scoring", Report(interval=0))) == [0, 1, 2]
        outer.advance(note="loss 0.2500")
    assert not progress._live
    assert "training loss 0.2500" in screen.getvalue()
    assert "scoring: " not in screen.getvalue()  # a bar, not lines
    assert [line.split(",")[0] for line in kept] == [
        "training: 0/2 (0%)",
        "training: 1/2 (50%)",
        "training: 2/2 (100%)",
    ]


def test_nothing_when_progress_is_false(capsys):
    assert list(track([1, 2], "scoring", False)) == [1, 2]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.42, "0.4s"), (42.4, "42s"), (185, "3m05s"), (3720, "1h02m")],
)
def test_duration(seconds, shown):
    assert duration(seconds) == shown


def _log_lines(run_dir) -> list[str]:
    """train.log without its time stamps."""
    return [line.split("  ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()]


def test_fit_logs_training_progress_and_the_test_split(
    model_dir, sentiment_data, monkeypatch, capsys
):
    from promptkit.runs.fitting import fit

    monkeypatch.setattr(progress, "INTERVAL", 0)
    config = run_config(model_dir("bert"), sentiment_data)  # trainer.progress: false
    config["trainer"] = {**config["trainer"], "epochs": 2}
    capsys.readouterr()  # what saving the tiny model showed
    result = fit(config)
    log = _log_lines(result.run_dir)
    training = [line for line in log if line.startswith("training: ")]
    assert len(training) == 1 + 2 * 8  # the first line, then one per batch of 8 (64 examples)
    assert training[-1].startswith("training: 16/16 (100%)")
    assert "epoch 2: validating (24 examples)" in log
    assert "test: scoring 24 examples" in log
    assert f"test: accuracy {result.test['accuracy']:.4f}" in log[-1]
    assert capsys.readouterr().err == ""  # trainer.progress: false: nothing on the console


def test_fit_shows_plain_lines_off_a_terminal(model_dir, sentiment_data, capsys):
    from promptkit.runs.fitting import fit

    config = run_config(model_dir("bert"), sentiment_data)
    config["trainer"] = {**config["trainer"], "epochs": 1, "progress": True}
    capsys.readouterr()  # what saving the tiny model showed
    result = fit(config)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("loading backbone ")
    assert re.fullmatch(r"loading backbone .*: done in .*", err[1])
    assert err[2].startswith("training: 0/8 (0%)")
    assert any(line.startswith("training: 8/8 (100%)") for line in err)
    assert "epoch 1: validating (24 examples)" in err
    assert "test: scoring 24 examples" in err
    assert err[-1] == f"test: accuracy {result.test['accuracy']:.4f}, " + (
        f"macro_f1 {result.test['macro_f1']:.4f}"
    )


def test_a_zero_shot_run_logs_its_validation(model_dir, sentiment_data, capsys):
    from promptkit.runs.fitting import fit

    hard = "<x> it was [MASK]."
    config = run_config(model_dir("bert"), sentiment_data, template=hard, trainable=[])
    config["trainer"] = {"epochs": 0, "progress": True}
    capsys.readouterr()  # what saving the tiny model showed
    result = fit(config)
    err = capsys.readouterr().err.splitlines()
    shown = f"zero-shot: validation accuracy {result.validation['accuracy']:.4f}"
    assert "zero-shot: validating (24 examples)" in err
    assert any(line.startswith(shown) for line in err)
    log = _log_lines(result.run_dir)
    assert "zero-shot: validating (24 examples)" in log
    assert "test: scoring 24 examples" in log


def test_a_closed_stderr_pipe_does_not_stop_the_work(monkeypatch):
    """``promptkit fit ... 2>&1 | head``: once the reader is gone, progress goes on into the
    log only."""
    import os
    import sys

    read, write = os.pipe()
    os.close(read)
    monkeypatch.setattr(sys, "stderr", os.fdopen(write, "w"))
    kept: list[str] = []
    report = Report(log=kept.append, interval=0)
    say("starting", report)  # through rich
    items = list(track(range(5), "scoring", report))  # plain lines
    say("done", report)
    assert items == [0, 1, 2, 3, 4]
    assert [LINE.match(line).group(1) for line in kept[1:-1]] == ["0", "1", "2", "3", "4", "5"]
    assert (kept[0], kept[-1]) == ("starting", "done")
