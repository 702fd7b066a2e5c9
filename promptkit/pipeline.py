"""From a config to a trained, evaluated run folder: what ``promptkit fit`` does."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from promptkit.backbone import Backbone, load_backbone
from promptkit.config import RunConfig
from promptkit.data import Split, as_examples, few_shot, label_indices, read_rows, stratified_split
from promptkit.errors import ConfigError
from promptkit.inference import classification_metrics, predict_logits
from promptkit.model import PromptModel, build_model, check_recipe
from promptkit.run import RESUME_FILE, Predictor, append_metrics
from promptkit.train import Trainer


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


def load_splits(
    config: RunConfig, classes: list[str] | None, template_inputs: tuple[str, ...]
) -> tuple[Splits, list[str]]:
    """Read, label, split and sample the data; returns the splits and the class names."""
    data = config.data
    if not data.train:
        raise ConfigError("data.train is missing: give a file or a split name.")
    rows = {
        name: read_rows(spec, data.dataset, data.subset)
        for name, spec in (
            ("train", data.train),
            ("validation", data.validation),
            ("test", data.test),
        )
        if spec
    }
    if classes is None:
        mapping = data.label_map or {}
        classes = sorted(
            {
                mapping.get(str(r[data.label_column]), str(r[data.label_column]))
                for r in rows["train"]
            }
        )
    splits = {
        name: Split(as_examples(r, config.inputs, template_inputs), label_indices(r, data, classes))
        for name, r in rows.items()
    }
    train = splits["train"]
    validation = splits.get("validation")
    if validation is None:
        train, validation = stratified_split(train, data.validation_size, config.seed)
    if data.few_shot:
        train = few_shot(train, data.few_shot, config.seed)
    if data.validation_few_shot:
        validation = few_shot(validation, data.validation_few_shot, config.seed + 1)
    return Splits(train, validation, splits.get("test")), classes


def evaluate_split(
    model: PromptModel, split: Split, batch_size: int = 64, progress: bool = False
) -> dict[str, float]:
    """Accuracy and macro-F1 of the model on a labelled split."""
    logits = predict_logits(model, model.encode(split.examples), batch_size, progress=progress)
    return classification_metrics(logits, split.labels)


def fit(config: RunConfig, resume: bool = False, backbone: Backbone | None = None) -> FitResult:
    """Train a prompt as the config says, save the run folder, evaluate on the test split.

    Args:
        config: the run config.
        resume: continue the run in ``config.output_dir`` from its resume state.
        backbone: ``config.backbone`` already loaded (it is loaded otherwise).
    """
    run_dir = Path(config.output_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if (run_dir / RESUME_FILE).exists():
            raise ConfigError(
                f"{run_dir} holds an earlier run: resume it with --resume, or "
                "choose another --output."
            )
        shutil.rmtree(run_dir)
    recipe = config.recipe()
    checked = check_recipe(recipe)  # before any model is loaded
    classes = checked.verbalizer.classes if checked.verbalizer else config.head.classes
    splits, classes = load_splits(config, classes, checked.template.inputs)
    backbone = backbone or load_backbone(
        config.backbone.name, config.backbone.kind, config.backbone.dtype
    )
    fingerprint = backbone.fingerprint()
    model = build_model(recipe, classes, backbone)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    (run_dir / "config.yaml").write_text(config_yaml)
    trainer = Trainer(
        model,
        recipe,
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
