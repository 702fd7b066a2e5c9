"""From a config to a trained, evaluated run folder: what ``promptkit fit`` does."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from promptkit import catalog
from promptkit.core.data import Split
from promptkit.errors import ConfigError, EmptyAnswersWarning, diverted
from promptkit.text.heads import HEADS
from promptkit.text.heads.classifier import ClassifierHead
from promptkit.core.inference import evaluate
from promptkit.text.joint_ensemble import member_recipes
from promptkit.modalities import modality_of
from promptkit.text.placements import PLACEMENTS
from promptkit.text.template import resolve_template
from promptkit.core.trainable import TrainableModule
from promptkit.serving.predictor import Predictor
from promptkit.core.distributed import processes
from promptkit.core.progress import Report, console_shown, metrics_text, say
from promptkit.runs.config import load_config, validate_config
from promptkit.core.run_folder import RunFolder
from promptkit.core.training import Trainer


@dataclass
class FitResult:
    """What a run produced."""

    run_dir: Path
    validation: dict[str, Any]
    test: dict[str, float] | None
    trainable_parameters: int
    saved_parameters: int
    predictor: Predictor


def evaluate_split(
    model: TrainableModule, split: Split, batch_size: int = 64, progress: bool | Report = False
) -> dict[str, float]:
    """The model's metrics on a labelled split (its task's: accuracy and macro-F1,
    entity-level precision, recall and F1 for tagging, the loss and BLEU, chrF and ROUGE-L
    for text answers); ``progress``: see ``promptkit.core.progress``."""
    return evaluate(model, split, None, batch_size, None, progress)


def _as_config(config: Any) -> Any:
    if isinstance(config, str | Path):
        return load_config(config)
    if isinstance(config, Mapping):
        return validate_config(dict(config))
    if not isinstance(config, BaseModel) or not hasattr(config, "recipe"):
        raise ConfigError(
            f"fit takes a run config (promptkit.load_config), a mapping or a YAML path, not a "
            f"{type(config).__name__}."
        )
    return config


def fit(
    config: Any, resume: bool = False, backbone: Any = None, overwrite: bool = False
) -> FitResult:
    """Train a prompt as the config says, save the run folder, evaluate on the test split.

    Args:
        config: the run config (text or vision): validated, a mapping, or a YAML file.
        resume: continue the run in ``config.output_dir`` from its resume state.
        backbone: for text, ``config.backbone`` already loaded, or its folder (it is loaded
            from ``config.backbone.name`` otherwise); another backbone is an error.
        overwrite: replace an earlier run in ``config.output_dir`` (else that is an error).
    """
    config = _as_config(config)
    check_runnable(config)
    state = processes()  # under `accelerate launch`, only the main process writes
    run = RunFolder(config.output_dir, writer=state.is_main_process)
    run.check(resume, overwrite)  # before anything loads; checked again under the lock
    if resume:
        run.check_resumed_config(config.model_dump(mode="json"))
    shown = config.trainer.progress and state.is_main_process
    with console_shown(shown):
        prepared = modality_of(config.model_dump()).prepare(config, backbone)
    with run.lock() if run.writer else contextlib.nullcontext():
        run.prepare(resume, overwrite)
        state.wait_for_everyone()
        run.write_config(config.model_dump(mode="json"))
        model, splits = prepared.model, prepared.splits
        if getattr(model, "demonstrations", None) is not None:
            run.save_demonstrations(model.demonstrations.records(model.classes))
        report = Report(shown, run.log)
        if config.trainer.epochs == 0:
            say(f"zero-shot: validating ({len(splits.validation)} examples)", report)
            saved = _untrained(model, config, splits.validation, run, prepared.fingerprint, report)
            say(f"zero-shot: validation {metrics_text(saved['validation'])}", shown)
            best = {"best_epoch": 0, **saved["validation"]}
        else:
            trainer = Trainer(
                model,
                config.recipe(),
                config.trainer,
                splits.train,
                splits.validation,
                run,
                prepared.fingerprint,
                config.seed,
            )
            best = trainer.fit(resume=resume)
            saved = trainer.state.best_document or {}
        if _estimated(model, config, splits, run):
            info = {k: saved[k] for k in ("validation", "epoch") if k in saved}
            state = model.trained_state()  # by every process: a sharded model gathers it
            run.save_model(model, config.recipe(), prepared.fingerprint, info, state)
        test = None
        if splits.test is not None:
            say(f"test: scoring {len(splits.test)} examples", report)
            with diverted(EmptyAnswersWarning, lambda line: say(f"test: {line}", report)):
                test = evaluate_split(model, splits.test, config.trainer.eval_batch_size, report)
            run.append_metrics({"split": "test", **test})
            say(f"test: {metrics_text(test)}", report)
        run.mark("finished")
    return FitResult(
        run.path,
        best,
        test,
        model.n_trainable(),
        sum(v.numel() for v in model.trained_state().values()),
        Predictor(model.eval()),
    )


def check_runnable(config: Any) -> None:
    """What ``fit`` refuses in a valid run config, before anything loads: epochs with
    nothing to train, a zero-shot run with parts that would start at random, and a device map
    under several processes."""
    if not config.trainable and config.trainer.epochs:
        raise ConfigError(
            f"trainable is [], so nothing trains in trainer.epochs {config.trainer.epochs}: set "
            "trainer.epochs: 0 for a zero-shot run, or name what trains."
        )
    if config.trainer.epochs == 0:
        _nothing_random(config)
    if getattr(config.backbone, "device_map", None) and processes().num_processes > 1:
        raise ConfigError(
            "backbone.device_map spreads one copy of the backbone over devices, in one process, "
            f"and this run has {processes().num_processes}: launch one process, or shard the "
            "backbone across processes with FSDP instead (README: sharded backbones)."
        )


def _nothing_random(config: Any) -> None:
    """A zero-shot run scores the model as built: a part that would start at random (and
    score chance) is an error."""
    recipes = member_recipes(config.recipe()) if getattr(config, "ensemble", None) else [config]
    for recipe in recipes:
        found = _random_part(recipe)
        if found:
            what, fix = found
            raise ConfigError(
                f"trainer.epochs is 0, so nothing trains, but {what}: its scores would be "
                f"chance. Train it (trainer.epochs: 1 or more){f', or {fix}' if fix else ''}."
            )


def _random_part(recipe: Any) -> tuple[str, str | None] | None:
    """What in a recipe starts at random (and how a zero-shot run avoids it), if anything."""
    if recipe.modality == "vision":
        return "a vision run's head is a new linear layer", None
    if issubclass(HEADS[recipe.head.type], ClassifierHead):
        return (
            f"the {recipe.head.type} head is a new linear layer",
            "score label words instead (head: {type: verbalizer})",
        )
    template = resolve_template(recipe.template)
    return PLACEMENTS[recipe.prompts.placement].random_start(recipe.prompts, template)


def _untrained(
    model: Any, config: Any, validation: Split, run: RunFolder, fingerprint: str, report: Report
) -> dict[str, Any]:
    """A zero-shot run (``trainer.epochs: 0``): the prompt as built (with what its head
    estimated from the data) is scored on the validation split and saved. A generator
    writes answers only when ``trainer.metric`` scores them (as a trained run's epochs do)."""
    batch_size = config.trainer.eval_batch_size
    wanted = [config.trainer.metric or model.task.default_metric]
    with diverted(EmptyAnswersWarning, lambda line: say(f"zero-shot: {line}", report)):
        metrics = evaluate(model, validation, None, batch_size, None, report, wanted)
    run.append_metrics({"epoch": 0, "split": "validation", **metrics})
    untrained = f" (trainable {config.trainable} stays as built)" if config.trainable else ""
    run.log(f"zero-shot (no training{untrained}): validation {metrics_text(metrics)}")
    info = {"validation": metrics, "epoch": 0}
    return run.save_model(model, config.recipe(), fingerprint, info)


def _estimated(model: Any, config: Any, splits: Any, run: RunFolder) -> bool:
    """Estimate on the data what follows training (the label bias, a multi-label model's
    thresholds); whether there was any."""
    calibrating = getattr(config, "calibration", None) is not None
    tuning = model.task.tunes_thresholds
    if calibrating:
        _calibrate(model, config, splits.train, run)
    if tuning:
        thresholds = model.tune_thresholds(splits.validation, config.trainer.eval_batch_size)
        shown = ", ".join(
            f"{c} {t:.3f}" for c, t in zip(model.classes, thresholds.tolist(), strict=True)
        )
        run.log(f"logit thresholds tuned on {len(splits.validation)} validation examples: {shown}")
    return calibrating or tuning


def _calibrate(model: Any, config: Any, train: Any, run: RunFolder) -> None:
    """Estimate the trained prompt's label bias."""
    settings = config.calibration
    unlabelled = None
    if settings.unlabelled is not None:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        unlabelled = [train.examples[i] for i in order[: settings.unlabelled].tolist()]
    probabilities = model.calibrate(
        settings.content_free, unlabelled, config.trainer.eval_batch_size
    )
    shown = ", ".join(
        f"{c} {p:.3f}" for c, p in zip(model.classes, probabilities.tolist(), strict=True)
    )
    source = f"{len(unlabelled)} training inputs" if unlabelled else "content-free inputs"
    run.log(f"calibrated on {source}: the prompt's mean class probabilities were {shown}")
