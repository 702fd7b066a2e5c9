"""The public face: load what was trained, and train (``fit``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from promptkit.core.run_folder import is_ensemble
from promptkit.runs.fitting import fit
from promptkit.serving.host import Host, host_runs
from promptkit.serving.predictor import Predictor, load_run
from promptkit.serving.run_ensemble import RunEnsemble

__all__ = ["fit", "load"]


def load(
    runs: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    backbone: Any = None,
    device: str | torch.device = "cpu",
) -> Predictor | Host | RunEnsemble:
    """Load a trained run (a ``Predictor``), or several onto one backbone (a ``Host``), or a
    saved ensemble (a ``RunEnsemble``).

    Args:
        runs: a run folder or a saved ensemble's folder; or a list of run folders (each
            run named after its folder); or a mapping of run names to run folders.
        backbone: another location of the backbone (a path or a loaded one); by default the
            one the (first) run names. A different backbone is an error.
        device: where to run.
    """
    if isinstance(runs, str | Path):
        if is_ensemble(runs):
            return RunEnsemble.load(runs, device)
        return load_run(runs, backbone, device)
    return host_runs(runs, backbone, device)
