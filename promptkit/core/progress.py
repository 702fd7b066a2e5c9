"""Progress of long work, shown on the console and kept in a run's log.

In a terminal, a rich bar shows on stderr. When stderr is not a terminal (a file, a pipe, a
job scheduler's log), plain lines go there instead: the first step, then one at least every
``INTERVAL`` seconds of work, and the last, each saying what runs, step/total, percent,
elapsed time and ETA. A report with a ``log`` (a run folder's ``RunFolder.log``) gets the
same lines at the same pace, whatever the console shows.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

INTERVAL = 5.0  # seconds of work between plain lines (tests set 0: a line per step)


def _stderr_unread() -> None:
    """Nobody reads stderr any more (a closed pipe, as ``2>&1 | head`` leaves): it goes to
    the null device from now on, and the work and its log go on."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stderr.fileno())
    os.close(null)


class _StderrConsole(Console):
    """Rich's console on stderr, which lets the work go on when nobody reads stderr (rich
    itself would exit)."""

    def on_broken_pipe(self) -> None:
        _stderr_unread()


_stderr = _StderrConsole(stderr=True)
_shown: ContextVar[bool] = ContextVar("promptkit_console_progress", default=True)
_Item = TypeVar("_Item")
_live: list[Progress] = []  # the bar shown now: work inside other work adds its line to it


@dataclass(frozen=True)
class Report:
    """Where progress goes: the console (stderr) if ``console``, and ``log`` (a function
    that keeps a line, e.g. ``RunFolder.log``) if given; plain lines come at least every
    ``interval`` seconds (None: ``INTERVAL``)."""

    console: bool = True
    log: Callable[[str], None] | None = None
    interval: float | None = None

    @property
    def on_console(self) -> bool:
        """Whether anything shows on the console (see ``console_shown``)."""
        return self.console and _shown.get()

    @property
    def shows_bar(self) -> bool:
        """Whether the console shows a bar (a terminal) rather than plain lines."""
        return self.on_console and _stderr.is_terminal


def as_report(progress: bool | Report) -> Report:
    """A report from what a caller passed: a Report, or whether to show progress on the
    console (True) or nowhere (False)."""
    return progress if isinstance(progress, Report) else Report(console=bool(progress))


@contextmanager
def console_shown(enabled: bool) -> Iterator[None]:
    """Within this context, nothing shows on the console unless ``enabled`` (logs still get
    their lines): what ``trainer.progress: false`` asks for."""
    token = _shown.set(enabled and _shown.get())
    try:
        yield
    finally:
        _shown.reset(token)


def say(message: str, progress: bool | Report = True) -> None:
    """One line, in the log and on the console (as plain text, never markup)."""
    report = as_report(progress)
    if report.log is not None:
        report.log(message)
    if report.on_console:
        _stderr.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def timed(what: str, progress: bool | Report = True) -> Iterator[None]:
    """A line before some work (``what``) and one after it with the time it took."""
    start = time.monotonic()
    say(what, progress)
    yield
    say(f"{what}: done in {duration(time.monotonic() - start)}", progress)


def metrics_text(metrics: Mapping[str, float]) -> str:
    """Metrics as a line says them: ``accuracy 0.8125, macro_f1 0.8000``."""
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def duration(seconds: float) -> str:
    """A duration as people read it: ``0.4s``, ``42s``, ``3m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Tracker:
    """The progress of ``total`` steps of work named ``what``, used as a context manager;
    ``completed``: steps already done (a resumed run). ``transient``: the terminal bar goes
    away at the end."""

    def __init__(
        self,
        what: str,
        total: int,
        progress: bool | Report = True,
        completed: int = 0,
        transient: bool = True,
    ) -> None:
        self.what, self.total, self.done = what, total, completed
        self.report = as_report(progress)
        self.interval = INTERVAL if self.report.interval is None else self.report.interval
        self._first = completed
        self._transient = transient
        self._bar: Progress | None = None
        self._lines_to_console = self.report.on_console and not self.report.shows_bar

    def __enter__(self) -> Tracker:
        self._start = self._last = time.monotonic()
        if self.report.shows_bar:
            self._owns_bar = not _live
            self._bar = _bar_shown(self._transient)
            self._task = self._bar.add_task(self.what, total=self.total, completed=self.done)
        self._line("")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is None:
            return
        if not self._owns_bar:  # work inside other work: its line goes
            self._bar.remove_task(self._task)
            return
        self._bar.stop()
        _live.clear()

    def advance(self, steps: int = 1, note: str = "") -> None:
        """``steps`` more steps done; ``note`` (e.g. the loss) is shown with them."""
        self.done += steps
        if self._bar is not None:
            description = f"{self.what} {note}" if note else self.what
            self._bar.update(self._task, advance=steps, description=description)
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= self.interval:
            self._last = now
            self._line(note)

    def _line(self, note: str) -> None:
        if not self._lines_to_console and self.report.log is None:
            return
        elapsed = time.monotonic() - self._start
        percent = 100 * self.done / self.total if self.total else 100
        rate = elapsed / (self.done - self._first) if self.done > self._first else None
        eta = duration(rate * (self.total - self.done)) if rate is not None else "?"
        line = (
            f"{self.what}: {self.done}/{self.total} ({percent:.0f}%), "
            f"{duration(elapsed)} elapsed, ETA {eta}" + (f", {note}" if note else "")
        )
        if self.report.log is not None:
            self.report.log(line)
        if self._lines_to_console:
            try:
                print(line, file=sys.stderr, flush=True)
            except BrokenPipeError:
                _stderr_unread()


def _bar_shown(transient: bool) -> Progress:
    """The bar on the terminal: the one shown already (rich shows one at a time), else a
    new one."""
    if not _live:
        _live.append(
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=_stderr,
                transient=transient,
            )
        )
        _live[0].start()
    return _live[0]


def track(items: Sequence[_Item], what: str, progress: bool | Report = True) -> Iterator[_Item]:
    """``items``, with the progress of going through them reported."""
    with Tracker(what, len(items), progress) as tracker:
        for item in items:
            yield item
            tracker.advance()
