"""Comparing timings on a noisy machine: every case runs once per round, the rounds repeat,
and each comparison is the median of the per-round ratios with its interquartile range.

One measurement on a shared machine moves by 10 % or more; timing the compared cases in turn
(A B A B ...) puts them under the same load, and the spread of the per-round ratios says how
far the median can be trusted: a ratio whose spread covers 1.0 reads as "even".
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def rounds(
    cases: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    alternate: bool = False,
    done: Callable[[int], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds of each case in each round, after ``warmup`` untimed rounds (``alternate``:
    every other round runs the cases in reverse order, so none always follows the same one;
    ``done`` is called with the number of each round finished, warm-up rounds included)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for index in range(warmup + repeats):
        order = list(cases.items())
        for name, run in order[::-1] if alternate and index % 2 else order:
            start = time.perf_counter()
            run()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
        if done is not None:
            done(index + 1)
    return times


def ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """The median of the per-round ratios and their quartiles."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": quartiles[0], "q3": quartiles[2]}


def shown(value: dict[str, float]) -> str:
    """A ratio as "0.97 (0.95-1.01), even" when its spread covers 1.0."""
    text = f"{value['median']:.2f} ({value['q1']:.2f}-{value['q3']:.2f})"
    return text + (", even" if value["q1"] <= 1.0 <= value["q3"] else "")
