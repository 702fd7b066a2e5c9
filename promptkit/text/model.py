"""PromptModel: a frozen backbone, its soft prompts, the placement and the head, as one module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from promptkit.backbone.loading import FINGERPRINT_SCHEME, Backbone, compile_layers
from promptkit.core.data import Split, as_examples
from promptkit.core.seeding import seeded
from promptkit.core.soft_prompts import SoftPrompts
from promptkit.core.trainable import TrainableModule, parameter_groups
from promptkit.errors import ConfigError, DataError
from promptkit.tasks import Task
from promptkit.tasks.multi_label import best_thresholds
from promptkit.text.calibration import calibrated, calibration_examples, estimate
from promptkit.text.config import ModelConfig
from promptkit.text.data import collate
from promptkit.text.demonstrations import Demonstrations, check_head
from promptkit.text.encoding import EncodedPrompt, PromptTokenizer
from promptkit.text.heads import HEADS, Head
from promptkit.text.joint_ensemble import JointEnsemble, check_joint, member_recipes
from promptkit.text.placements import PLACEMENTS, Placement
from promptkit.text.template import Template, check_input_slot, resolve_template

DEFAULT_MAX_LENGTH = 256


def _words(item: object) -> bool:
    """Whether an item is a list of words (a pre-split input)."""
    return isinstance(item, list | tuple) and bool(item) and all(isinstance(w, str) for w in item)


class PromptModel(TrainableModule):
    """Everything that runs a prompt: ``model(batch)`` gives logits over ``model.classes``.

    Args:
        backbone: the pretrained model and tokenizer.
        template: the compiled template.
        prompts: the soft-slot vectors.
        placement: puts them into the backbone (one of ``promptkit.text.placements``).
        head: one of ``promptkit.text.heads``.
        trainable: the groups that train, any of "prompts", "head", "bias", "all".
        max_length: longest encoded sequence.
        padding_side: "left" or "right".
        inputs: input slot -> data column, as in training.
        seed: seeds sampling when the model writes text.
    """

    def __init__(
        self,
        backbone: Backbone,
        template: Template,
        prompts: SoftPrompts,
        placement: Placement,
        head: Head,
        trainable: Sequence[str],
        max_length: int = 256,
        padding_side: str = "right",
        inputs: Mapping[str, str] | None = None,
        seed: int = 13,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.backbone = backbone
        self.lm = backbone.model
        self.prompts = prompts
        self.head = head
        self.template = template
        self.padding_side = padding_side
        self.inputs = dict(inputs or {})
        self.placement = placement
        answers = None
        if not head.task.has_classes:
            answers = "decoder" if backbone.is_encoder_decoder else "inline"
        self.tokenizer = PromptTokenizer(
            template,
            backbone.tokenizer,
            max_length,
            backbone.is_causal,
            placement.takes_positions,
            answers,
        )
        self.groups = parameter_groups(prompts, head, backbone.model, trainable)
        self.calibration: torch.Tensor | None = None  # log mean class probabilities
        self.thresholds: torch.Tensor | None = None  # multi-label: each class's logit cut
        self.demonstrations: Demonstrations | None = None  # put before each query
        if backbone.dispatched:
            self.to(backbone.device)

    @property
    def classes(self) -> list[str]:
        """Label names, in logit order."""
        return self.head.classes

    @property
    def task(self) -> Task:
        """What the head answers."""
        return self.head.task

    @property
    def device(self) -> torch.device:
        """Where the model takes its inputs: the backbone's (first) device."""
        return self.backbone.device

    def to(self, *args: Any, **kwargs: Any) -> PromptModel:
        """As ``nn.Module.to``, except over a backbone spread by a device map: it stays
        where the map put it, and the prompts and the head go where it takes its inputs."""
        if self.backbone.dispatched:
            args, kwargs = (self.backbone.device,), {}
        return super().to(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> PromptModel:
        if not self.backbone.dispatched:
            return super()._apply(fn, recurse)
        for child in self.children():  # accelerate's hooks place a dispatched backbone
            if child is not self.lm:
                child._apply(fn, recurse)
        return self

    def fingerprint(self, scheme: int = FINGERPRINT_SCHEME) -> str:
        """The backbone's fingerprint."""
        return self.backbone.fingerprint(scheme)

    def enable_checkpointing(self) -> None:
        """Recompute the backbone's activations in the backward pass (less memory)."""
        self.lm.activation_checkpointing_enable()

    @property
    def _no_split_modules(self) -> list[str]:
        """The backbone's layer classes: accelerate's FSDP (``TRANSFORMER_BASED_WRAP``) shards
        each layer as one unit, and the rest (embeddings tied to an output layer, prompts,
        head) as another."""
        return sorted({type(layer).__name__ for layer in self.placement.backbone_layers})

    def examples(self, items: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Bind user inputs: a string (or a list of words) fills the template's only input
        slot; a mapping is a data row (columns mapped to slots as in training). A tagger splits
        text into words at whitespace."""
        slots = self.template.inputs
        rows = []
        for number, item in enumerate(items, 1):
            if isinstance(item, str) or _words(item):
                if len(slots) != 1:
                    raise ConfigError(
                        f"the template has inputs {list(slots)}: pass mappings, not strings."
                    )
                item = {self.inputs.get(slots[0], slots[0]): item}
            if isinstance(item, list | tuple) and not item:
                raise DataError(f"item {number} is an empty list of words: give at least one.")
            if not isinstance(item, Mapping):
                raise DataError(
                    f"item {number} is a {type(item).__name__}: give a text, a list of words, "
                    "or a row (a mapping of fields)."
                )
            row = dict(item)
            for column in self.data_columns():
                if isinstance(row.get(column), str):
                    row[column] = self.task.from_text(row[column])
            rows.append(row)
        return as_examples(rows, self.inputs, slots)

    def data_columns(self) -> list[str]:
        """The data columns the template's input slots read."""
        return [self.inputs.get(slot, slot) for slot in self.template.inputs]

    def answer_counts(self, examples: Sequence[Mapping[str, Any]]) -> list[int]:
        """How many words each example's word-list inputs hold (what a tagger labels)."""
        return [
            sum(len(ex[s]) for s in self.template.inputs if isinstance(ex[s], list | tuple))
            for ex in examples
        ]

    def encode(
        self, examples: Sequence[Mapping[str, object]], labels: Sequence[Any] | None = None
    ) -> list[EncodedPrompt]:
        """Encode examples (mappings from input-slot names and Jinja fields to values); for a
        generator, with ``labels``, their text answers too; with ``demonstrations``, each
        example's before it."""
        encoded = self.tokenizer(examples, None if self.task.has_classes else labels)
        if self.demonstrations is None:
            return encoded
        return self.demonstrations.prepend(self, examples, encoded)

    def generate(
        self,
        examples: Sequence[Mapping[str, object]],
        batch_size: int = 16,
        progress: bool = False,
        **decoding: Any,
    ) -> list[str]:
        """Write the answer of each example (a generator's; ``decoding`` overrides the head's
        decoding options, e.g. ``num_beams=4``)."""
        from promptkit.text.decoding import generate

        return generate(self, examples, batch_size, progress, decoding)

    def collate(
        self,
        encoded: Sequence[EncodedPrompt],
        labels: Sequence[Any] | None = None,
        expand: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Pad encoded examples into a batch (the padding side suits the backbone); each
        example as the rows its head runs it as, unless ``expand`` is off."""
        rows = self.head.expand(encoded) if expand else encoded
        batch = collate(rows, self.backbone.pad_id, self.padding_side)
        if labels is not None:
            self.task.add_labels(batch, labels)
        return batch

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, C]`` (``[B, W, C]`` per word for a tagger) for a batch."""
        inputs = self.placement(batch, self.prompts(), self.head.read_positions(batch))
        return self.finished(self.head(self.lm, inputs, batch))

    def finished(self, logits: torch.Tensor) -> torch.Tensor:
        """The head's logits as the model answers them outside training: calibrated, once
        calibrated; less each class's threshold, once tuned (multi-label)."""
        if self.training:
            return logits
        if self.calibration is not None:
            logits = calibrated(logits, self.calibration)
        if self.thresholds is not None:
            logits = logits - self.thresholds.to(logits.device)
        return logits

    def tune_thresholds(self, split: Split, batch_size: int = 64) -> torch.Tensor:
        """Each class's threshold with the best F1 on a labelled split (multi-label);
        predictions then answer a class when its probability is at least 0.5."""
        from promptkit.core.inference import predict_logits

        if not self.task.tunes_thresholds:
            raise ConfigError(
                f"thresholds are tuned for multi-label runs; this one's task is {self.task.name}."
            )
        self.thresholds = None
        logits = predict_logits(self, self.encode(split.examples, split.labels), batch_size)
        self.thresholds = best_thresholds(logits, torch.tensor(split.labels))
        return self.thresholds

    def prepare(self, examples: Sequence[Mapping[str, Any]]) -> None:
        """What the head estimates from unlabelled training inputs before training (a
        knowledgeable verbalizer's word priors)."""
        self.head.prepare(self, examples)

    def calibrate(
        self,
        content_free: Sequence[str] | None = None,
        examples: Sequence[Mapping[str, Any]] | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """Estimate the prompt's label bias and divide it out of every later prediction
        (contextual calibration); returns the mean class probabilities it found.

        Args:
            content_free: inputs without content, put in every input slot (default "N/A",
                "" and "[MASK]", as plain text).
            examples: unlabelled examples (``model.examples(items)``) to estimate from
                instead.
        """
        examples = calibration_examples(self, content_free, examples)
        self.calibration = estimate(self, examples, batch_size)
        return self.calibration.exp()


@dataclass(frozen=True)
class CheckedRecipe:
    """A recipe whose template, placement and head were checked without loading any model."""

    recipe: ModelConfig
    template: Template
    placement: type[Placement]
    head: type[Head]
    classes: list[str] | None  # fixed by the head's config (None: from the data)

    @property
    def task(self) -> Task:
        """What the head answers."""
        return self.head.task_of(self.recipe.head)


def check_recipe(recipe: ModelConfig) -> CheckedRecipe:
    """Compile the template, and check that the placement and the head can take it."""
    template = resolve_template(recipe.template)
    check_input_slot(template, recipe.template)
    missing_inputs = [s for s in recipe.inputs if s not in template.inputs]
    if missing_inputs:
        raise ConfigError(
            f"inputs maps {missing_inputs} but the template has no such input "
            f"slot (it has {['<' + i + '>' for i in template.inputs]})."
        )
    placement = PLACEMENTS[recipe.prompts.placement]
    placement.check(recipe.prompts, template)
    head = HEADS[recipe.head.type]
    classes = head.check(recipe.head, template)
    if not head.task_of(recipe.head).one_class and recipe.calibration is not None:
        raise ConfigError(
            "calibration corrects a distribution over classes, and a multi-label head scores "
            "each class on its own: drop the calibration section (thresholds are tuned instead)."
        )
    if recipe.demonstrations is not None:
        check_head(recipe.head.type)
    if recipe.ensemble is not None:
        members = [check_recipe(member) for member in member_recipes(recipe)]
        classes = check_joint(recipe, members)
    elif "prompts" in recipe.trainable and not template.n_slots:
        raise ConfigError(
            "trainable includes 'prompts' but the template has no soft slot ([P1], [P*n]): "
            "add some, or drop 'prompts'."
        )
    return CheckedRecipe(recipe, template, placement, head, classes)


def build_model(
    recipe: ModelConfig | CheckedRecipe,
    classes: Sequence[str] | None = None,
    backbone: Backbone | None = None,
    collapsed: bool = False,
) -> PromptModel:
    """Build a PromptModel from its recipe. Everything checkable is checked before loading.

    Args:
        recipe: the model part of a config (or the same, already checked).
        classes: label names for a head whose config fixes none (a verbalizer's words do).
        backbone: an already loaded backbone (default: load ``recipe.backbone``).
        collapsed: build the prompts as a plain table (to load a saved prompt).
    """
    checked = recipe if isinstance(recipe, CheckedRecipe) else check_recipe(recipe)
    config = checked.recipe
    if checked.classes is None and not classes:
        raise ConfigError(
            f"a {config.head.type} head needs its labels: set head.classes or give data."
        )
    backbone = backbone or config.backbone.load()
    if config.backbone.compile:
        compile_layers(backbone.model)
    if config.ensemble is not None:
        fixed = classes or checked.classes
        members = [build_model(r, fixed, backbone, collapsed) for r in member_recipes(config)]
        return JointEnsemble(members, config.ensemble.combine)
    placement = checked.placement(config.prompts, backbone.model)
    max_length = config.max_length or min(DEFAULT_MAX_LENGTH, placement.max_positions)
    if max_length > placement.max_positions:
        raise ConfigError(
            f"max_length {max_length} is beyond the {placement.max_positions} positions "
            f"{backbone.name} has: set max_length to at most {placement.max_positions}."
        )
    with seeded(config.seed) as generator:  # encoder and head weights are seeded too
        prompts = placement.build_prompts(
            config.prompts, checked.template, backbone, collapsed, generator
        ).to(backbone.model.dtype)
        head = checked.head.build(config.head, backbone, checked.template, classes or [])
    head.task = checked.task
    padding = config.padding_side
    if padding == "auto":
        padding = "left" if backbone.is_causal else "right"
    return PromptModel(
        backbone,
        checked.template,
        prompts,
        placement,
        head,
        config.trainable,
        max_length,
        padding,
        config.inputs,
        config.seed,
    )
