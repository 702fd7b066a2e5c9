"""Layer selection for deep prompts: which layers get their own prompt vectors."""

from __future__ import annotations

import re

from promptkit.errors import ConfigError

_FORMS = "all, first:K, last:K or A-B (0-based, inclusive)"


def select_layers(spec: str, n_layers: int) -> list[int]:
    """The layer indices a spec names: ``all``, ``first:K``, ``last:K`` or ``A-B``."""
    spec = spec.strip()
    if spec == "all":
        return list(range(n_layers))
    if match := re.fullmatch(r"(first|last):(\d+)", spec):
        k = int(match[2])
        if not 1 <= k <= n_layers:
            raise ConfigError(f"layers {spec!r}: K must be 1..{n_layers} for this backbone")
        return list(range(k)) if match[1] == "first" else list(range(n_layers - k, n_layers))
    if match := re.fullmatch(r"(\d+)-(\d+)", spec):
        start, end = int(match[1]), int(match[2])
        if not 0 <= start <= end < n_layers:
            raise ConfigError(f"layers {spec!r}: need 0 <= A <= B < {n_layers} for this backbone")
        return list(range(start, end + 1))
    raise ConfigError(f"layers {spec!r}: write {_FORMS}")


def check_layers(spec: str) -> str:
    """A layer spec's form, checked before the backbone is known (its bounds are checked by
    ``select_layers``)."""
    spec = spec.strip()
    if spec != "all" and not re.fullmatch(r"(first|last):\d+|\d+-\d+", spec):
        raise ValueError(f"write {_FORMS}")
    return spec
