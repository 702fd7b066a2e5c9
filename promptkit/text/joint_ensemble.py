"""Ensembles trained jointly: several prompts for one task (other templates, verbalizers or
placements) on one frozen backbone, trained together on the loss of their combination and
saved as one run.

The recipe's ``ensemble`` section lists the members, each as the recipe's keys it replaces::

    template: "<x> It was [P*2] [MASK]."
    ensemble:
      members:
        - {}                                              # the recipe itself
        - {template: "Review: <x> Sentiment: [P*2] [MASK]."}
        - {template: "<x> All in all, [P*2] [MASK].", head: {verbalizer: sentiment_single}}
      combine: weighted

Each example runs through every member; their class log-probabilities are combined by their
mean (``mean``) or by a softmax of member weights that train with the prompts (``weighted``),
and the cross-entropy of the combination trains everything at once. (For ensembles of runs
trained apart, see ``promptkit.serving.run_ensemble``.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from promptkit.core.config import Strict
from promptkit.core.trainable import TrainableModule
from promptkit.errors import ConfigError
from promptkit.tasks import CLASSIFICATION, Task

if TYPE_CHECKING:
    from promptkit.text.config import ModelConfig
    from promptkit.text.model import CheckedRecipe, PromptModel

JOINT_GROUPS = {"prompts", "head"}  # the backbone is shared: the members cannot train it


class JointEnsembleConfig(Strict):
    """``ensemble``: prompts trained together as one model."""

    members: list[dict[str, Any]] = Field(
        min_length=2,
        description="each member as the recipe sections it replaces whole (template, head, "
        "prompts); {} is the recipe itself",
    )
    combine: Literal["mean", "weighted"] = Field(
        "mean", description="mean log-probability, or member weights that train"
    )


def member_recipes(recipe: ModelConfig) -> list[ModelConfig]:
    """The members' recipes: the recipe with each member's keys in place."""
    from promptkit.core.config import validate

    base = recipe.model_dump(exclude={"ensemble"}, exclude_unset=True)
    out = []
    for number, member in enumerate(recipe.ensemble.members, 1):
        unknown = sorted(set(member) - {"template", "head", "prompts"})
        if unknown:
            raise ConfigError(
                f"ensemble member {number} sets {unknown}: a member replaces template, head or "
                "prompts only (the backbone, data and training are shared)."
            )
        out.append(validate(type(recipe), {**base, **member}, f"ensemble member {number}"))
    return out


def check_joint(recipe: ModelConfig, checked: Sequence[CheckedRecipe]) -> list[str] | None:
    """What a joint ensemble needs: members that label one task's classes from the same
    inputs, and only prompts and heads to train. Returns the classes the members fix."""
    if recipe.calibration is not None or recipe.demonstrations is not None:
        raise ConfigError(
            "a jointly trained ensemble takes no calibration or demonstrations section: drop "
            "them, or train the members apart and combine them with promptkit.RunEnsemble."
        )
    idle = sorted(set(recipe.trainable) - JOINT_GROUPS)
    if idle:
        raise ConfigError(
            f"the members of a jointly trained ensemble share one frozen backbone, so they "
            f"train prompts and heads only, not {idle}: drop them from trainable."
        )
    if not all(c.task.one_class for c in checked):
        raise ConfigError("a jointly trained ensemble combines classifiers of one class each.")
    inputs = {tuple(c.template.inputs) for c in checked}
    if len(inputs) > 1:
        raise ConfigError(
            f"the members' templates read different inputs ({sorted(inputs)}): an ensemble "
            "answers one task, so every template reads the same input slots."
        )
    fixed = {tuple(c.classes) for c in checked if c.classes is not None}
    if len(fixed) > 1:
        raise ConfigError(
            f"the members disagree on the classes ({sorted(fixed)}): give every member the "
            "same classes, in the same order."
        )
    return list(fixed.pop()) if fixed else None


class JointEnsemble(TrainableModule):
    """Prompt models of one task on one backbone, answering (and training) as one.

    Args:
        members: the members, built on the same backbone object.
        combine: "mean" or "weighted".
    """

    def __init__(self, members: Sequence[PromptModel], combine: str = "mean") -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.prompts = nn.Module()  # the members hold the prompts
        self.weights = nn.Parameter(torch.zeros(len(members)), requires_grad=combine == "weighted")
        self.groups = {}
        for member in members:
            for group, params in member.groups.items():
                self.groups.setdefault(group, []).extend(params)
        if combine == "weighted":
            self.groups.setdefault("head", []).append(self.weights)

    @property
    def first(self) -> PromptModel:
        return self.members[0]

    @property
    def classes(self) -> list[str]:
        """Label names, in logit order."""
        return self.first.classes

    @property
    def task(self) -> Task:
        """What the ensemble answers."""
        return CLASSIFICATION

    def fingerprint(self, scheme: int = 2) -> str:
        """The shared backbone's fingerprint."""
        return self.first.fingerprint(scheme)

    def data_columns(self) -> list[str]:
        """The data columns the templates read (the same for every member)."""
        return self.first.data_columns()

    def enable_checkpointing(self) -> None:
        """Recompute the shared backbone's activations in the backward pass."""
        self.first.enable_checkpointing()

    def prepare(self, examples: Sequence[Mapping[str, Any]]) -> None:
        """What each member's head estimates from unlabelled inputs before training."""
        for member in self.members:
            member.prepare(examples)

    def examples(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Bind user inputs (as ``PromptModel.examples``)."""
        return self.first.examples(items)

    def encode(
        self, examples: Sequence[Mapping[str, Any]], labels: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Each example as every member encodes it."""
        encoded = [member.encode(examples, labels) for member in self.members]
        return list(zip(*encoded, strict=True))

    def collate(
        self, encoded: Sequence[tuple[Any, ...]], labels: Sequence[Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """The members' batches in one mapping (their keys prefixed ``m<index>.``)."""
        batch = {}
        for index, member in enumerate(self.members):
            own = member.collate([e[index] for e in encoded])
            batch.update({f"m{index}.{key}": value for key, value in own.items()})
        if labels is not None:
            self.task.add_labels(batch, labels)
        return batch

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The combined class log-probabilities ``[B, C]``."""
        log_probs = torch.stack(
            [
                member(_own(batch, index)).float().log_softmax(-1)
                for index, member in enumerate(self.members)
            ]
        )
        weights = self.weights.softmax(0).to(log_probs.device)
        return (weights[:, None, None] * log_probs).sum(0).log_softmax(-1)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Every member's trained state (prefixed ``members.<index>.``) and the weights."""
        state = {"weights": self.weights.detach().clone()} if self.combine == "weighted" else {}
        for index, member in enumerate(self.members):
            state.update({f"members.{index}.{k}": v for k, v in member.trained_state().items()})
        return state

    def load_trained_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what ``trained_state`` saved."""
        state = dict(state)
        if "weights" in state:
            with torch.no_grad():
                self.weights.copy_(state.pop("weights"))
        for index, member in enumerate(self.members):
            prefix = f"members.{index}."
            member.load_trained_state(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            )
        unknown = [k for k in state if not k.startswith("members.")]
        if unknown:
            raise ConfigError(f"saved parameters do not fit this ensemble ({unknown[:3]}).")


def _own(batch: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    prefix = f"m{index}."
    return {k.removeprefix(prefix): v for k, v in batch.items() if k.startswith(prefix)}
