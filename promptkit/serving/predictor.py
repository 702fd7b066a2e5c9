"""Loading a trained run back, and predicting with it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from promptkit.core.inference import predict_logits
from promptkit.core.progress import Report
from promptkit.core.run_folder import RunFolder
from promptkit.core.trainable import TrainableModule
from promptkit.errors import BackboneMismatchError, ConfigError, PromptkitError
from promptkit.modalities import modality_of
from promptkit.text.demonstrations import Demonstrations


class Predictor:
    """A trained prompt on its backbone, ready to label new examples.

    Items are what the model takes: for text a string (the template's only input) or a data
    row; for images a path, a PIL image or an array.
    """

    def __init__(self, model: TrainableModule) -> None:
        self.model = model

    @property
    def classes(self) -> list[str]:
        """Label names."""
        return self.model.classes

    def logits(self, items: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Logits ``[N, C]`` (``[N, W, C]`` per word for a tagger)."""
        self._classes_only()
        items = checked_items(items, batch_size)
        if not items:
            return torch.empty(0, len(self.classes))
        encoded = self.model.encode(self.model.examples(items))
        return predict_logits(self.model, encoded, batch_size)

    def predict(self, items: Sequence[Any], batch_size: int = 64) -> list[Any]:
        """The predicted label of each item; for a tagger, the tag of each word (a string
        item is split into words at whitespace); for a generator, the text it writes."""
        if not self.model.task.has_classes:
            return self.generate(items, min(batch_size, 16))
        return [self.model.task.chosen(p) for p in self.predict_proba(items, batch_size)]

    def generate(
        self,
        items: Sequence[Any],
        batch_size: int = 16,
        progress: bool | Report = False,
        **decoding: Any,
    ) -> list[str]:
        """The text a generator writes for each item; ``decoding`` replaces the run's decoding
        options (``num_beams=4``, ``max_new_tokens=32``, ``do_sample=True``, ``stop=[...]``);
        ``progress``: see ``promptkit.core.progress``."""
        if self.model.task.has_classes:
            raise PromptkitError(
                "this run's model labels classes, it does not write text: use predict."
            )
        items = checked_items(items, batch_size)
        return self.model.generate(self.model.examples(items), batch_size, progress, **decoding)

    def predict_proba(
        self, items: Sequence[Any], batch_size: int = 64, progress: bool | Report = False
    ) -> list[Any]:
        """Class probabilities of each item (of each word, for a tagger); ``progress``: see
        ``promptkit.core.progress``."""
        self._classes_only()
        items = checked_items(items, batch_size)
        if not items:
            return []
        examples = self.model.examples(items)
        logits = predict_logits(self.model, self.model.encode(examples), batch_size, None, progress)
        probs = self.model.task.probabilities(logits)
        return self.model.task.named(probs, self.classes, self.model.answer_counts(examples))

    def _classes_only(self) -> None:
        if not self.model.task.has_classes:
            raise PromptkitError(
                "this run's model writes text, it has no class scores: use predict or generate."
            )


def checked_items(items: Any, batch_size: Any) -> list[Any]:
    """The items as a list (a data frame's rows as mappings); a single item or a bad batch
    size is an error that says so."""
    if hasattr(items, "to_dict") and hasattr(items, "columns"):  # a pandas data frame
        items = items.to_dict("records")
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise PromptkitError(
            f"predict takes a list of items, not a {type(items).__name__}: write "
            "predict([item]) for one."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PromptkitError(f"batch_size is a positive whole number, not {batch_size!r}.")
    return list(items)


def load_run(
    run_dir: str | Path, backbone: Any = None, device: str | torch.device = "cpu"
) -> Predictor:
    """Load a trained prompt onto its backbone.

    Args:
        run_dir: the run folder.
        backbone: text runs: another location of the same backbone (a path or a loaded one);
            by default the one named in the recipe. A different backbone is an error.
        device: where to run.
    """
    if not isinstance(run_dir, str | Path):
        raise PromptkitError(f"load takes a run folder's path, not a {type(run_dir).__name__}.")
    device = _device(device)
    run = RunFolder(run_dir)
    document = run.read_recipe()
    modality = modality_of(document["recipe"])
    try:
        recipe = modality.saved_recipe(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{run.file(run.RECIPE)} is damaged (recipe {where}: {first['msg']}): train the "
            "run again."
        ) from None
    model = modality.build(recipe, document["classes"], backbone)
    saved = document["backbone"]
    expected = saved["fingerprint"]
    found = model.fingerprint(saved.get("fingerprint_scheme", 1))
    if found != expected:
        raise BackboneMismatchError(
            f"{run_dir} was trained on {document['backbone']['name']} (fingerprint {expected}), "
            f"but the backbone given has fingerprint {found}: load it onto the backbone it was "
            f"trained on.{_quantized_hint(recipe)}"
        )
    model.load_trained_state(run.read_prompt())
    if getattr(recipe, "demonstrations", None) is not None:
        records = run.read_demonstrations()
        model.demonstrations = Demonstrations.of_records(
            recipe, model.template, records, model.classes
        )
    return Predictor(model.to(device).eval())


def _quantized_hint(recipe: Any) -> str:
    """What a mismatch means for a run trained on a backbone quantized while loading."""
    quantization = getattr(getattr(recipe, "backbone", None), "quantization", None)
    if quantization is None:
        return ""
    return (
        f" It was trained on that backbone quantized with {quantization.method}: the same "
        "backbone quantized otherwise, or not at all, computes with other weights and counts "
        "as another one (leave backbone= out to load it quantized as the run's recipe says)."
    )


def _device(device: Any) -> torch.device:
    """``device`` as a torch device this machine has; anything else is an error."""
    try:
        found = torch.device(device)
        torch.empty(0, device=found)
    except (RuntimeError, TypeError, AssertionError) as err:
        raise ConfigError(
            f"device {device!r} cannot be used here ({str(err).splitlines()[0]}): give one "
            "this machine has, e.g. 'cpu' or 'cuda'."
        ) from None
    return found
