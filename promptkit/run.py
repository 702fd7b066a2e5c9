"""The run folder: what a trained prompt is on disk, and loading it back.

    prompt.safetensors   the trained parameters only (prompt encoders collapsed)
    promptkit.json       the recipe (template, head, method, backbone id and fingerprint)
    metrics.jsonl        one line per evaluation
    resume/state.pt      optimizer, scheduler, uncollapsed encoders, progress: to resume

Every file is written atomically (a temporary file, then a rename), so a crash never leaves
a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from promptkit.backbone import Backbone, load_backbone
from promptkit.config import VisionModelConfig, recipe_from_dict
from promptkit.errors import BackboneMismatchError, ConfigError
from promptkit.inference import predict_logits
from promptkit.model import build_model
from promptkit.policy import PolicyModule

PROMPT_FILE = "prompt.safetensors"
RECIPE_FILE = "promptkit.json"
METRICS_FILE = "metrics.jsonl"
RESUME_FILE = "resume/state.pt"
FORMAT_VERSION = 1


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through ``write(tmp_path)`` then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_prompt(
    run_dir: Path,
    model: PolicyModule,
    recipe: BaseModel,
    fingerprint: str,
    info: Mapping[str, Any] | None = None,
) -> None:
    """Save the trained parameters and the recipe."""
    state = {k: v.contiguous().cpu() for k, v in model.trained_state().items()}
    atomic_write(run_dir / PROMPT_FILE, lambda p: save_file(state, str(p)))
    document = {
        "format": FORMAT_VERSION,
        "recipe": recipe.model_dump(mode="json"),
        "classes": model.classes,
        "backbone": {"name": recipe.backbone.name, "fingerprint": fingerprint},
        "trained_parameters": sum(v.numel() for v in state.values()),
        **(info or {}),
    }
    atomic_write(run_dir / RECIPE_FILE, lambda p: p.write_text(json.dumps(document, indent=2)))


def append_metrics(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Append one line to metrics.jsonl."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(dict(record)) + "\n")


def read_recipe(run_dir: str | Path) -> dict[str, Any]:
    """The parsed promptkit.json of a run."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a promptkit run: it has no {RECIPE_FILE}.")
    return json.loads(path.read_text())


class Predictor:
    """A trained prompt on its backbone, ready to label new examples.

    Items are what the model takes: for text a string (the template's only input) or a data
    row; for images a path, a PIL image or an array.
    """

    def __init__(self, model: PolicyModule) -> None:
        self.model = model

    @property
    def classes(self) -> list[str]:
        """Label names."""
        return self.model.classes

    def logits(self, items: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Class logits ``[N, C]`` (``[N, W, C]`` per word for a token head)."""
        encoded = self.model.encode(self.model.examples(items))
        return predict_logits(self.model, encoded, batch_size)

    def predict(self, items: Sequence[Any], batch_size: int = 64) -> list[str] | list[list[str]]:
        """The predicted label of each item; for a token head, the tag of each word (a string
        item is split into words at whitespace)."""
        return _per_item(self._probabilities(items, batch_size), lambda p: max(p, key=p.get))

    def predict_proba(
        self, items: Sequence[Any], batch_size: int = 64
    ) -> list[dict[str, float]] | list[list[dict[str, float]]]:
        """Class probabilities of each item (of each word, for a token head)."""
        return _per_item(self._probabilities(items, batch_size), lambda p: p)

    def _probabilities(self, items: Sequence[Any], batch_size: int) -> list:
        examples = self.model.examples(items)
        probs = predict_logits(self.model, self.model.encode(examples), batch_size).softmax(-1)
        named = [
            dict(zip(self.classes, row, strict=True))
            if isinstance(row[0], float)
            else [dict(zip(self.classes, word, strict=True)) for word in row]
            for row in probs.tolist()
        ]
        if probs.dim() == 2:
            return named
        counts = self.model.word_counts(examples)
        return [words[:n] for words, n in zip(named, counts, strict=True)]


def _per_item(probabilities: list, pick: Callable[[dict[str, float]], Any]) -> list:
    return [
        [pick(word) for word in item] if isinstance(item, list) else pick(item)
        for item in probabilities
    ]


def load(
    run_dir: str | Path, backbone: str | Backbone | None = None, device: str | torch.device = "cpu"
) -> Predictor:
    """Load a trained prompt onto its backbone.

    Args:
        run_dir: the run folder.
        backbone: text runs: another location of the same backbone (a path or a loaded one);
            by default the one named in the recipe. A different backbone is an error.
        device: where to run.
    """
    run_dir = Path(run_dir)
    document = read_recipe(run_dir)
    recipe = recipe_from_dict(document["recipe"])
    if isinstance(recipe, VisionModelConfig):
        from promptkit.vision.model import build_vision_model  # timm: vision runs only

        model: PolicyModule = build_vision_model(recipe, document["classes"])
        found, name = model.fingerprint(), recipe.backbone.name
    else:
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(
                backbone or recipe.backbone.name, recipe.backbone.kind, recipe.backbone.dtype
            )
        found, name = backbone.fingerprint(), backbone.name
        model = build_model(recipe, document["classes"], backbone, collapsed=True)
    expected = document["backbone"]["fingerprint"]
    if found != expected:
        raise BackboneMismatchError(
            f"{run_dir} was trained on {document['backbone']['name']} (fingerprint {expected}), "
            f"but {name} has fingerprint {found}: load it onto the backbone it was trained on."
        )
    model.load_trained_state(load_file(str(run_dir / PROMPT_FILE)))
    return Predictor(model.to(device).eval())


def save_resume(run_dir: Path, state: Mapping[str, Any]) -> None:
    """Save the resume state atomically."""
    atomic_write(run_dir / RESUME_FILE, lambda p: torch.save(dict(state), p))


def read_resume(run_dir: Path) -> dict[str, Any] | None:
    """The resume state of a run, or None if it has none."""
    path = run_dir / RESUME_FILE
    return torch.load(path, weights_only=False) if path.is_file() else None
