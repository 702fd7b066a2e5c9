"""The errors promptkit raises for bad input: each says what is wrong and how to fix it."""

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class PromptkitError(Exception):
    """Base class of every error promptkit raises on purpose."""


class TemplateError(PromptkitError):
    """A template that cannot be compiled or rendered."""


class VerbalizerError(PromptkitError):
    """A verbalizer that does not fit the labels or the tokenizer."""


class ConfigError(PromptkitError):
    """A configuration that does not validate."""


class DataError(PromptkitError):
    """Data that does not fit the template, the labels or the task."""


class BackboneMismatchError(PromptkitError):
    """Trained parameters loaded onto a backbone they were not trained on."""


class TrainingError(PromptkitError):
    """Training that cannot go on (for example a NaN loss)."""


class DataWarning(UserWarning):
    """Data that promptkit used in part (rows left out, examples cut)."""


class EmptyAnswersWarning(UserWarning):
    """Answers a generator wrote empty, counted with their likely cause and its fix."""


@contextmanager
def diverted(category: type[Warning], say: Callable[[str], None]) -> Iterator[None]:
    """Within the block, each warning of ``category`` goes to ``say`` (a line on the
    command line's stderr, a run's train.log) instead of Python's warning output; other
    warnings pass as they would."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        yield
    for warning in caught:
        if issubclass(warning.category, category):
            say(str(warning.message))
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (Ctrl-C, SIGTERM) after saving its resume state.

    Args:
        where: where it stopped, e.g. "epoch 2, step 5".
        signal: the signal number.
    """

    def __init__(self, where: str, signal: int) -> None:
        super().__init__(where)
        self.where, self.signal = where, signal
