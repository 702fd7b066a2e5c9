"""Stopping training cleanly on Ctrl-C or SIGTERM: the signal is noted, and the trainer stops
at the next step boundary, after saving what it needs to resume exactly there."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StopRequest:
    """Set by SIGINT / SIGTERM while ``stop_signals`` is active; a second signal stops at once
    (KeyboardInterrupt), losing nothing that was saved."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signal is not None


@contextmanager
def stop_signals(notice: Callable[[str], None] = print) -> Iterator[StopRequest]:
    """Within this context SIGINT and SIGTERM ask the caller to stop (main thread only;
    elsewhere signals keep their handlers)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame: object) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.signal = signum
        notice(
            f"{signal.Signals(signum).name}: stopping after this step, once the state to resume "
            "from is saved (signal again to stop at once)"
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
