"""``promptkit check``: everything about a run config that can be known without training.

The config is loaded as ``fit`` loads it, its data read and split as ``fit`` reads them, the
template rendered over the first examples, the label words tokenised, and the backbone's
size read from its config (the model is built on the meta device: no weight is read). Each
step that fails is a problem; the steps that do not depend on it still run.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from promptkit.errors import DataWarning, PromptkitError
from promptkit.text.template import Segment, Template

SHOWN_EXAMPLES = 3
_Result = TypeVar("_Result")


@dataclass
class CheckReport:
    """What a check found: facts by section (in order), the first training examples as the
    template renders them, and the problems (none: the config is ready to run)."""

    sections: dict[str, list[str]] = field(default_factory=dict)
    template: Template | None = None
    rendered: list[list[Segment]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    def add(self, section: str, line: str) -> None:
        """A fact of ``section``."""
        self.sections.setdefault(section, []).append(line)

    def attempt(self, section: str, step: Callable[..., _Result], *args: Any) -> _Result | None:
        """``step(*args)``; a promptkit error is a problem of ``section`` (and None)."""
        try:
            return step(*args)
        except PromptkitError as err:
            self.problems.append(f"{section}: {err}")
            return None


def check_config(path: str | Path, overrides: Sequence[str] = ()) -> CheckReport:
    """Check the run config at ``path`` (with ``overrides``, ``a.b=value``) as ``fit`` would
    use it, without training: see the module's description."""
    from promptkit.modalities import modality_of
    from promptkit.runs.fitting import check_runnable
    from promptkit.runs.config import load_config

    report = CheckReport()
    config = report.attempt("config", load_config, path, list(overrides))
    if config is None:
        return report
    report.attempt("config", check_runnable, config)
    modality = modality_of(config.model_dump())
    trains = ", ".join(config.trainable) or "nothing (zero-shot)"
    report.add("config", f"{modality.name} run; trains {trains}; {config.trainer.epochs} epoch(s)")
    for key, value in _paths(config):
        shown = Path(value).absolute()
        absent = " (new)" if key == "output_dir" else " (no such file or folder)"
        report.add("config", f"{key}: {shown}{'' if shown.exists() else absent}")
    report.attempt("config", _output_dir, report, Path(config.output_dir))
    if modality.name == "text":
        _check_text(config, modality, report)
    else:
        _check_vision(config, modality, report)
    return report


def _paths(config: Any) -> list[tuple[str, str]]:
    """The config's local paths (relative ones are read from the working directory): data
    files, the backbone's folder, a verbalizer file, the run folder."""
    found = [(f"data.{s}", getattr(config.data, s)) for s in ("train", "validation", "test")]
    if getattr(config.data, "dataset", None) or getattr(config.data, "source", None) not in (
        None,
        "image_folder",
    ):
        found = []  # split names of a hub or built-in data set, not paths
    found.append(("data.path", getattr(config.data, "path", None)))
    found.append(("backbone.name", config.backbone.name))
    found.append(("backbone.checkpoint", getattr(config.backbone, "checkpoint", None)))
    found.append(("head.verbalizer", getattr(config.head, "verbalizer", None)))
    found = [(k, v) for k, v in found if isinstance(v, str) and _local(k, v)]
    return [*found, ("output_dir", config.output_dir)]


def _output_dir(report: CheckReport, path: Path) -> None:
    """What fit checks of its run folder; an earlier run there is noted (``fit --resume``
    continues it, ``--overwrite`` replaces it)."""
    from promptkit.core.run_folder import RunFolder, check_writable

    folder = RunFolder(path)
    if not folder.is_run():
        folder.check(resume=False, overwrite=False)
        return
    check_writable(path, "output_dir", folder=True)
    report.add(
        "config",
        "output_dir holds an earlier run: fit continues it with --resume, or replaces it "
        "with --overwrite",
    )


def _local(key: str, value: str) -> bool:
    """Whether a config value names a local path (not a hub id, catalog name or split)."""
    if key == "head.verbalizer":
        return value.endswith((".yaml", ".yml"))
    return key != "backbone.name" or Path(value).exists()


def _check_text(config: Any, modality: Any, report: CheckReport) -> None:
    from promptkit.text.model import check_recipe

    checked = report.attempt("recipe", check_recipe, config.recipe())
    if checked is not None:
        report.template = checked.template
        loaded = _data(report, modality, config, checked.task)
        if loaded is not None:
            splits, _ = loaded
            for example in splits.train.examples[:SHOWN_EXAMPLES]:
                report.rendered.append(checked.template.render(example))
    tokenizer = _text_backbone(report, config.backbone)
    verbalizer = getattr(config.head, "verbalizer", None)
    if checked is not None and tokenizer is not None and verbalizer is not None:
        report.attempt(
            "label words", _label_words, report, config.head, tokenizer, checked.template
        )


def _text_backbone(report: CheckReport, section: Any) -> Any:
    """The backbone's tokenizer (None if it cannot be loaded), its kind and size reported;
    checked whatever the recipe's problems."""
    from promptkit.backbone.loading import load_tokenizer

    found = report.attempt("backbone", load_tokenizer, section.name)
    if found is None:
        return None
    tokenizer, kind = found
    report.add("backbone", f"{section.name}: a {kind} checkpoint")
    report.attempt("backbone", _size, report, section.name, section.kind, section.dtype)
    return tokenizer


def _check_vision(config: Any, modality: Any, report: CheckReport) -> None:
    from promptkit.tasks import CLASSIFICATION

    _data(report, modality, config, CLASSIFICATION)
    report.attempt("backbone", _vision_size, report, config.backbone)


def _data(report: CheckReport, modality: Any, config: Any, task: Any) -> tuple[Any, Any] | None:
    """The splits and classes, with each split's size and examples per class reported;
    rows left out (``data.invalid: drop``) are reported too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        loaded = report.attempt("data", modality.load_data, config)
    for warning in caught:
        if issubclass(warning.category, DataWarning):
            report.add("data", str(warning.message))
    if loaded is None:
        return None
    splits, classes = loaded
    if classes:
        report.add("data", f"classes ({len(classes)}): {', '.join(classes)}")
    for name in ("train", "validation", "test"):
        split = getattr(splits, name)
        if split is None:
            continue
        counts = task.class_counts(split.labels, classes) if task.has_classes else Counter()
        per_class = ", ".join(f"{c} {counts[c]}" for c in classes)
        report.add(
            "data", f"{name}: {len(split)} examples" + (f" ({per_class})" if classes else "")
        )
        empty = [c for c in classes if not counts[c]] if task.one_class else []
        if empty and name != "test":
            report.problems.append(f"data: the {name} split has no example of {empty}.")
    return loaded


def _size(report: CheckReport, name: str, kind: str, dtype: str) -> None:
    from promptkit.backbone.loading import dtype_bytes, parameter_count

    _memory(report, parameter_count(name, kind), dtype_bytes(dtype), dtype)


def _vision_size(report: CheckReport, backbone: Any) -> None:
    from promptkit.vision.model import vision_parameter_count

    count = vision_parameter_count(backbone)
    report.add("backbone", f"{backbone.name}")
    _memory(report, count, 4, "float32")


def _memory(report: CheckReport, count: int, size: int, dtype: str) -> None:
    report.add(
        "backbone",
        f"{_how_many(count)} parameters x {size} bytes ({dtype}) = "
        f"{_bytes(count * size)} for the weights (training adds activations, "
        "and the optimizer state of what trains)",
    )


def _how_many(count: int) -> str:
    """``134.5M``; a count under a million in full (``45,632``), not ``0.0M``."""
    return f"{count / 1e6:.1f}M" if count >= 10**6 else f"{count:,}"


def _bytes(size: int) -> str:
    """``0.50 GiB``; under a GiB in MiB (``0.17 MiB``), not ``0.00 GiB``."""
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 / 10 else f"{size / 2**20:.2f} MiB"


def _label_words(report: CheckReport, head: Any, tokenizer: Any, template: Template) -> None:
    """Each class's words and the tokens they read as where [MASK] stands; a word the
    tokenizer cannot write is a problem."""
    from promptkit.text.encoding import word_tokens

    several = False
    for label, words in head.words().words.items():
        shown = []
        for word in words:
            ids = word_tokens(tokenizer, word, template.space_before_mask)
            if ids is None:
                report.problems.append(
                    f"label words: {word!r} ({label}) is not in the tokenizer's vocabulary: "
                    "choose another word."
                )
                continue
            several |= len(ids) > 1
            count = "1 token" if len(ids) == 1 else f"{len(ids)} tokens"
            shown.append(f"{word} -> {' '.join(tokenizer.convert_ids_to_tokens(ids))} ({count})")
        report.add("label words", f"{label}: " + "; ".join(shown))
    if several:
        report.add(
            "label words",
            f"words of several tokens are read as head.multi_token says "
            f"({getattr(head, 'multi_token', 'mean')})",
        )
