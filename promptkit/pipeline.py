"""From a config to a trained, evaluated run folder: what ``promptkit fit`` does."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from promptkit.backbone import Backbone, load_backbone
from promptkit.config import DataConfig, RunConfig, VisionRunConfig
from promptkit.data import (
    Split,
    as_examples,
    few_shot,
    label_indices,
    mapped_labels,
    read_rows,
    stratified_split,
    tag_classes,
)
from promptkit.errors import ConfigError
from promptkit.inference import metrics, predict_logits
from promptkit.model import build_model, check_recipe
from promptkit.policy import PolicyModule
from promptkit.run import RESUME_FILE, Predictor, append_metrics
from promptkit.train import Trainer

Rows = list[dict[str, Any]]


@dataclass
class Splits:
    """The data of a run."""

    train: Split
    validation: Split
    test: Split | None


@dataclass
class FitResult:
    """What a run produced."""

    run_dir: Path
    validation: dict[str, Any]
    test: dict[str, float] | None
    trainable_parameters: int
    saved_parameters: int
    predictor: Predictor


def read_splits(data: DataConfig, read: Callable[[str], Rows]) -> dict[str, Rows]:
    """The rows of each split the data config names (train is required)."""
    if not data.train:
        raise ConfigError("data.train is missing: give a file, a folder or a split name.")
    specs = {"train": data.train, "validation": data.validation, "test": data.test}
    return {name: read(spec) for name, spec in specs.items() if spec}


def build_splits(
    rows: dict[str, Rows],
    data: DataConfig,
    classes: list[str],
    to_examples: Callable[[Rows], Rows],
    label_column: str,
    seed: int,
) -> Splits:
    """Label the rows, split off a validation set if there is none, sample few-shot."""
    splits = {
        name: Split(to_examples(r), label_indices(r, classes, label_column, data.label_map))
        for name, r in rows.items()
    }
    train, validation = splits["train"], splits.get("validation")
    if validation is None:
        train, validation = stratified_split(train, data.validation_size, seed)
    if data.few_shot:
        train = few_shot(train, data.few_shot, seed)
    if data.validation_few_shot:
        validation = few_shot(validation, data.validation_few_shot, seed + 1)
    return Splits(train, validation, splits.get("test"))


def load_splits(
    config: RunConfig, classes: list[str] | None, template_inputs: tuple[str, ...]
) -> tuple[Splits, list[str]]:
    """Read, label, split and sample text data; returns the splits and the class names."""
    data = config.data
    rows = read_splits(data, lambda spec: read_rows(spec, data.dataset, data.subset))
    names = mapped_labels(rows["train"], data.label_column, data.label_map)
    classes = classes or (tag_classes(names) if config.head.type == "token" else sorted(set(names)))
    splits = build_splits(
        rows,
        data,
        classes,
        lambda r: as_examples(r, config.inputs, template_inputs),
        data.label_column,
        config.seed,
    )
    return splits, classes


def evaluate_split(
    model: PolicyModule, split: Split, batch_size: int = 64, progress: bool = False
) -> dict[str, float]:
    """The model's metrics on a labelled split (accuracy and macro-F1, or entity-level
    precision, recall and F1 for sequence labelling)."""
    logits = predict_logits(model, model.encode(split.examples), batch_size, progress=progress)
    return metrics(logits, split.labels, model.classes)


def _prepare_text(config: RunConfig, backbone: Backbone | None) -> tuple[PolicyModule, Splits, str]:
    recipe = config.recipe()
    checked = check_recipe(recipe)  # before any model is loaded
    classes = checked.verbalizer.classes if checked.verbalizer else config.head.classes
    splits, classes = load_splits(config, classes, checked.template.inputs)
    backbone = backbone or load_backbone(
        config.backbone.name, config.backbone.kind, config.backbone.dtype
    )
    fingerprint = backbone.fingerprint()
    return build_model(recipe, classes, backbone), splits, fingerprint


def _prepare_vision(config: VisionRunConfig) -> tuple[PolicyModule, Splits, str]:
    from promptkit.vision.data import read_image_rows  # timm and torchvision: vision runs only
    from promptkit.vision.model import build_vision_model

    data = config.data
    rows = read_splits(data, lambda spec: read_image_rows(data, spec))
    classes = data.classes or sorted(set(mapped_labels(rows["train"], "label", data.label_map)))
    rows = {
        name: [
            row
            for row, label in zip(r, mapped_labels(r, "label", data.label_map), strict=True)
            if label in classes
        ]
        for name, r in rows.items()
    }
    splits = build_splits(rows, data, classes, lambda r: r, "label", config.seed)
    model = build_vision_model(config.recipe(), classes)
    return model, splits, model.fingerprint()


def fit(
    config: RunConfig | VisionRunConfig,
    resume: bool = False,
    backbone: Backbone | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train a prompt as the config says, save the run folder, evaluate on the test split.

    Args:
        config: the run config (text or vision).
        resume: continue the run in ``config.output_dir`` from its resume state.
        backbone: for text, ``config.backbone`` already loaded (it is loaded otherwise).
        overwrite: replace an earlier run in ``config.output_dir`` (else that is an error).
    """
    run_dir = Path(config.output_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if (run_dir / RESUME_FILE).exists() and not overwrite:
            raise ConfigError(
                f"{run_dir} holds an earlier run: continue it with --resume, replace it with "
                "--overwrite, or choose another --output."
            )
        shutil.rmtree(run_dir)
    if isinstance(config, VisionRunConfig):
        model, splits, fingerprint = _prepare_vision(config)
    else:
        model, splits, fingerprint = _prepare_text(config, backbone)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    (run_dir / "config.yaml").write_text(config_yaml)
    trainer = Trainer(
        model,
        config.recipe(),
        config.trainer,
        splits.train,
        splits.validation,
        run_dir,
        fingerprint,
        config.seed,
    )
    best = trainer.fit(resume=resume)
    test = None
    if splits.test is not None:
        test = evaluate_split(
            model, splits.test, config.trainer.eval_batch_size, config.trainer.progress
        )
        append_metrics(run_dir, {"split": "test", **test})
    return FitResult(
        run_dir,
        best,
        test,
        model.n_trainable(),
        sum(v.numel() for v in model.trained_state().values()),
        Predictor(model.eval()),
    )
