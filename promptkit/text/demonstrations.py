"""Demonstrations (LM-BFF, Gao et al. 2021; in-context learning): labelled training examples
put before each query, each rendered through the query's own template with the answer filled
in.

For every query, ``per_class`` examples of each class are chosen from the training pool (a
seeded draw per example, ``random``, or the most similar by the cosine of the mean input
embeddings of their texts, ``similar``; never the query itself), ordered in rounds of one per
class (the classes of a round in a seeded shuffle), rendered with the class's first label
word in place of [MASK] and their soft slots left out, and joined by ``separator`` before
the query. The query is never cut for them: the last ones are dropped until it fits.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field

from promptkit.core.config import Strict
from promptkit.errors import ConfigError, DataWarning
from promptkit.text.heads import LABEL_WORD_HEADS

if TYPE_CHECKING:
    from promptkit.core.data import Split
    from promptkit.text.config import ModelConfig
    from promptkit.text.encoding import EncodedPrompt
    from promptkit.text.model import PromptModel
    from promptkit.text.template import Template


class DemonstrationsConfig(Strict):
    """``demonstrations``: labelled training examples put before each query."""

    per_class: int = Field(ge=1, description="demonstrations of each class per query")
    choose: Literal["random", "similar"] = Field(
        "random",
        description="a seeded draw per query, or the most similar training examples",
    )
    separator: str = Field("\n", description="what follows each demonstration")


def check_head(head_type: str) -> None:
    """Demonstrations show their answer as a label word: only heads with label words."""
    if head_type not in LABEL_WORD_HEADS:
        raise ConfigError(
            f"demonstrations show each example's answer as its class's label word, and a "
            f"{head_type} head has none: use a head with label words "
            f"({', '.join(LABEL_WORD_HEADS)}), or drop the demonstrations section."
        )


class Demonstrations:
    """The training pool and how each query's demonstrations are chosen.

    Args:
        examples: the pool's examples (the fields the template reads).
        labels: each example's class index.
        label_words: the word shown as the answer of each class, in class order.
        config: the recipe's demonstrations section.
        seed: seeds the draws (with each query's content).
        template: the template the examples are rendered through.
    """

    def __init__(
        self,
        examples: Sequence[Mapping[str, Any]],
        labels: Sequence[int],
        label_words: Sequence[str],
        config: DemonstrationsConfig,
        seed: int,
        template: Template,
    ) -> None:
        self.fields = [*template.inputs, *sorted(template.jinja_fields - set(template.inputs))]
        self.examples = [{f: ex[f] for f in self.fields if f in ex} for ex in examples]
        self.labels = list(labels)
        self.label_words = list(label_words)
        self.config = config
        self.seed = seed
        self.inputs = template.inputs
        self.keys = [self._key(ex) for ex in self.examples]
        self.by_class = {
            c: [i for i, label in enumerate(self.labels) if label == c]
            for c in range(len(label_words))
        }
        self._blocks: list[list[int]] | None = None
        self._vectors: tuple[tuple[int, int], torch.Tensor] | None = None

    @classmethod
    def of_split(
        cls, recipe: ModelConfig, template: Template, train: Split, classes: Sequence[str]
    ) -> Demonstrations:
        """The pool of a training split; a class with fewer examples than ``per_class`` is
        an error that names it."""
        per_class = recipe.demonstrations.per_class
        counts = {name: train.labels.count(c) for c, name in enumerate(classes)}
        short = {name: n for name, n in counts.items() if n < per_class}
        if short:
            shown = ", ".join(f"{name!r} has {n}" for name, n in short.items())
            raise ConfigError(
                f"demonstrations.per_class is {per_class}, but in the training data {shown}: "
                "lower per_class, or give those classes more examples."
            )
        return cls(
            train.examples, train.labels, _label_words(recipe, classes), **_rest(recipe, template)
        )

    @classmethod
    def of_records(
        cls,
        recipe: ModelConfig,
        template: Template,
        records: Sequence[Mapping[str, Any]],
        classes: Sequence[str],
    ) -> Demonstrations:
        """The pool as ``records()`` saved it."""
        index = {name: c for c, name in enumerate(classes)}
        unknown = {r["label"] for r in records} - set(index)
        if unknown:
            raise ConfigError(
                f"the saved demonstrations have labels {sorted(unknown)} that the run's classes "
                f"({list(classes)}) lack: the run folder is damaged; train it again."
            )
        return cls(
            [r["example"] for r in records],
            [index[r["label"]] for r in records],
            _label_words(recipe, classes),
            **_rest(recipe, template),
        )

    def records(self, classes: Sequence[str]) -> list[dict[str, Any]]:
        """The pool as JSON records (an example and its class name each), to save."""
        return [
            {"example": _jsonable(ex), "label": classes[label]}
            for ex, label in zip(self.examples, self.labels, strict=True)
        ]

    def prepend(
        self,
        model: PromptModel,
        examples: Sequence[Mapping[str, Any]],
        encoded: Sequence[EncodedPrompt],
    ) -> list[EncodedPrompt]:
        """The encoded queries with their demonstrations before them; the last ones are
        dropped where they do not fit ``max_length`` (with a warning that counts them)."""
        tokenizer = model.tokenizer
        blocks = self._encoded_pool(model)
        out, short = [], 0
        for query, picks in zip(encoded, self.choose(model, examples), strict=True):
            lengths = itertools.accumulate(len(blocks[i]) for i in picks)
            kept = sum(total <= tokenizer.max_length - len(query) for total in lengths)
            short += kept < len(picks)
            out.append(tokenizer.prepended(query, [t for i in picks[:kept] for t in blocks[i]]))
        if short:
            warnings.warn(
                f"{short} of {len(out)} examples kept fewer demonstrations than asked: "
                f"max_length={tokenizer.max_length} has no room for them all (the query is "
                "kept whole, the last demonstrations dropped); raise max_length or lower "
                "demonstrations.per_class.",
                DataWarning,
                stacklevel=3,
            )
        return out

    def choose(self, model: PromptModel, examples: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        """The pool indices of each example's demonstrations, in the order they are shown."""
        keys = [self._key(ex) for ex in examples]
        scores: list[list[float] | None] = [None] * len(examples)
        if self.config.choose == "similar":
            scores = (self._embedded(model, examples) @ self._pool_vectors(model).T).tolist()
        return [self._picked(key, score) for key, score in zip(keys, scores, strict=True)]

    def _picked(self, key: str, score: list[float] | None) -> list[int]:
        """One query's demonstrations: ``per_class`` of each class (drawn, or the best
        scored), in rounds of one per class, each round's classes in a seeded shuffle."""
        rng = random.Random(hashlib.sha256(f"{self.seed}\0{key}".encode()).digest())
        k, picks = self.config.per_class, []
        for members in self.by_class.values():
            members = [i for i in members if self.keys[i] != key]
            if score is None:
                picks.append(rng.sample(members, min(k, len(members))))
            else:
                picks.append(sorted(members, key=lambda i: -score[i])[:k])
        shown = []
        for round_ in range(k):
            rng.shuffle(picks)
            shown += [p[round_] for p in picks if round_ < len(p)]
        return shown

    def _key(self, example: Mapping[str, Any]) -> str:
        """An example's content (the fields the template reads) as a stable text."""
        fields = {f: example[f] for f in self.fields if f in example}
        return json.dumps(fields, sort_keys=True, default=str)

    def _encoded_pool(self, model: PromptModel) -> list[list[int]]:
        """Each pool example's tokens with its answer, and the separator's (once)."""
        if self._blocks is None:
            answers = [self.label_words[c] for c in self.labels]
            separator = model.tokenizer.data_tokens(self.config.separator)
            rows = model.tokenizer.answered(self.examples, answers)
            self._blocks = [[*row, *separator] for row in rows]
        return self._blocks

    def _pool_vectors(self, model: PromptModel) -> torch.Tensor:
        """The pool's embedded texts, computed again only when the embeddings change."""
        weight = model.backbone.input_embeddings
        version = (weight.data_ptr(), weight._version)  # _version counts in-place updates
        if self._vectors is None or self._vectors[0] != version:
            self._vectors = (version, self._embedded(model, self.examples))
        return self._vectors[1]

    def _embedded(self, model: PromptModel, examples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Unit vectors of the examples' input texts: their mean input embeddings."""
        texts = [" ".join(_text(ex[slot]) for slot in self.inputs) for ex in examples]
        ids = model.tokenizer.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)
        weight = model.backbone.input_embeddings
        with torch.no_grad():
            rows = [
                weight[torch.tensor(row, device=weight.device)].float().mean(0)
                if row
                else weight.new_zeros(weight.shape[1], dtype=torch.float32)
                for row in ids["input_ids"]
            ]
            return torch.nn.functional.normalize(torch.stack(rows), dim=-1).cpu()


def _label_words(recipe: ModelConfig, classes: Sequence[str]) -> list[str]:
    """Each class's first label word, in class order."""
    words = recipe.head.words().words
    return [words[name][0] for name in classes]


def _rest(recipe: ModelConfig, template: Template) -> dict[str, Any]:
    """The constructor's arguments that come from the recipe and the template."""
    return {"config": recipe.demonstrations, "seed": recipe.seed, "template": template}


def _text(value: Any) -> str:
    """An input's text (a list of words joined by spaces)."""
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _jsonable(example: Mapping[str, Any]) -> dict[str, Any]:
    """An example as JSON keeps it (what its key and rendering read stay the same)."""
    return json.loads(json.dumps(dict(example), default=str))
