"""Discrete template search by prompt scoring: each candidate hard template is scored zero-shot
on the run's validation data (its verbalizer, its backbone, loaded once), and the best is the
one to train or use.

Candidates are template texts or catalog names; they are hard templates (no soft slots: an
untrained soft slot would score noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from promptkit import catalog
from promptkit.errors import ConfigError, PromptkitError
from promptkit.text.heads import HEADS
from promptkit.core.progress import Report, say
from promptkit.runs.config import validate_config
from promptkit.text.template import SegmentKind, Template, resolve_template

ZERO_SHOT_HEADS = ("verbalizer",)  # a soft verbalizer's class vectors are trained


@dataclass(frozen=True)
class TemplateScore:
    """One candidate's zero-shot metrics on the validation split."""

    template: str
    metric: str
    score: float
    metrics: dict[str, float]


def score_templates(
    config: Any, candidates: Sequence[str], backbone: Any = None, progress: bool | Report = False
) -> list[TemplateScore]:
    """The candidates' zero-shot scores on ``config``'s validation data, best first (by
    ``trainer.metric``, default the task's first metric; ties keep the candidates' order).

    Args:
        config: a text run config whose head is a verbalizer; its template is replaced by
            each candidate, and nothing trains.
        candidates: template texts or catalog names.
        backbone: the config's backbone already loaded (default: loaded once here).
        progress: where each candidate's scoring is reported (``promptkit.core.progress``).
    """
    from promptkit.modalities import modality_of
    from promptkit.runs.fitting import evaluate_split

    configs = _candidate_configs(config, candidates)
    task = HEADS[config.head.type].task_of(config.head)
    metric = config.trainer.metric or task.default_metric
    if metric not in task.metric_names:  # before any model loads
        raise ConfigError(
            f"trainer.metric {metric!r} is not measured: choose one of {list(task.metric_names)}."
        )
    modality = modality_of(config.model_dump())
    scores = []
    for number, (template, candidate) in enumerate(zip(candidates, configs, strict=True), 1):
        say(f"candidate {number} of {len(candidates)}: {template}", progress)
        try:
            prepared = modality.prepare(candidate, backbone)
            backbone = prepared.model.backbone
            metrics = evaluate_split(
                prepared.model, prepared.splits.validation, config.trainer.eval_batch_size, progress
            )
        except PromptkitError as err:
            raise type(err)(f"candidate {number} ({template!r}): {err}") from None
        scores.append(TemplateScore(template, metric, metrics[metric], metrics))
    lower_is_better = metric in task.lower_is_better
    return sorted(scores, key=lambda s: s.score if lower_is_better else -s.score)


def _candidate_configs(config: Any, candidates: Sequence[str]) -> list[Any]:
    """The run config with each candidate as its template and nothing to train; every
    candidate is checked before any model loads."""
    if not candidates:
        raise PromptkitError("no candidate templates: give at least one (a text or a name).")
    if getattr(config.head, "type", None) not in ZERO_SHOT_HEADS:
        raise ConfigError(
            "template search scores hard templates zero-shot, which needs a verbalizer head "
            "(label words read at [MASK]): set head.verbalizer."
        )
    data = config.model_dump(mode="json")
    data["trainer"] = {**data["trainer"], "lr": {}}  # nothing trains
    configs = []
    for number, candidate in enumerate(candidates, 1):
        if not isinstance(candidate, str) or not candidate.strip():
            raise PromptkitError(f"candidate {number} is empty: give a template or a name.")
        if resolve_template(candidate).n_slots:
            raise ConfigError(
                f"candidate {number} ({candidate!r}) has soft slots, which would score as "
                "untrained noise: search hard templates, then add soft slots to the best."
            )
        configs.append(
            validate_config({**data, "template": candidate, "trainable": []}, f"candidate {number}")
        )
    return configs


def catalog_candidates(config: Any) -> list[str]:
    """The catalog's hard templates whose input slots are those of ``config``'s template:
    no soft slots, and an input before [MASK] (what any backbone, causal ones too, can use)."""
    inputs = set(resolve_template(config.template).inputs)
    return [
        name
        for name in catalog.entries("templates")
        if _input_then_mask(found := resolve_template(name))
        and not found.n_slots
        and set(found.inputs) == inputs
    ]


def _input_then_mask(template: Template) -> bool:
    kinds = [segment.kind for segment in template.segments()]
    return SegmentKind.MASK in kinds and SegmentKind.INPUT in kinds[: kinds.index(SegmentKind.MASK)]
