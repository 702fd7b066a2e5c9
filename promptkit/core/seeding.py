"""Seeded construction: modules built inside get the same random initialisation every run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Within this context the global torch RNG starts from ``seed`` (it is restored after);
    yields a generator with the same seed for explicit initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)
