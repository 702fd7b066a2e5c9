"""Automatic label-word search (LM-BFF's automatic selection of label words, with PETAL's
likelihood ratio): the words a verbalizer should use, found from the LM's own predictions
at [MASK] on labelled training examples.

1. For every example, the log-probabilities over the vocabulary where [MASK] is read (as
   the verbalizer head reads them), kept for the whole words of the tokenizer only.
2. For each class c and word v: ``log mean_{i in c} p_i(v) - log mean_{all i} p_i(v)``, how
   much likelier the word is on the class's examples than on the data as a whole.
3. Each word goes to the class where it scores highest, so no word serves two classes; each
   class keeps its ``candidates`` best.
4. Greedily, one word per class at a time, each class takes the candidate that gives the
   hard verbalizer (mean of its words' probabilities) the best training accuracy, ties to
   the better likelihood ratio, until it has ``per_class`` words.

Everything after the forwards is a pure function of the ``[N, V]`` log-probabilities and
the labels; there is no randomness.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from promptkit.core.progress import Report
from promptkit.errors import ConfigError, DataError, VerbalizerError
from promptkit.text.encoding import word_tokens
from promptkit.text.heads import LABEL_WORD_HEADS
from promptkit.text.heads.verbalizer import VerbalizerConfig, check_mask, vocabulary_log_probs
from promptkit.text.label_words import score_classes

if TYPE_CHECKING:
    from promptkit.text.config import ModelConfig, RunConfig
    from promptkit.text.model import PromptModel


def search_label_words(
    model: PromptModel,
    examples: Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    per_class: int = 3,
    candidates: int = 50,
    batch_size: int = 32,
    progress: bool | Report = False,
) -> dict[str, list[str]]:
    """Label words for each of ``model.classes``, found on labelled examples.

    Args:
        model: a PromptModel whose template has [MASK] and whose backbone has an LM head.
        examples: bound examples (``model.examples(items)``).
        labels: each example's class index.
        per_class: the most words a class gets.
        candidates: how many of its best words by likelihood ratio a class chooses from.
        batch_size: examples per forward.
        progress: where the forwards done are reported (``promptkit.core.progress``).

    Returns:
        class -> its words, in the order they were chosen (what ``head.verbalizer``
        takes).
    """
    check_search(model, examples, labels, per_class, candidates)
    space = model.template.space_before_mask
    vocabulary = whole_words(model.backbone.tokenizer, space)
    width = model.lm.get_output_embeddings().weight.shape[0]
    vocabulary = {i: w for i, w in vocabulary.items() if i < width}
    ids = torch.tensor(list(vocabulary), dtype=torch.long)
    log_probs = vocabulary_log_probs(model, examples, ids, batch_size, progress)
    chosen = choose_words(
        log_probs, torch.tensor([int(y) for y in labels]), len(model.classes), per_class, candidates
    )
    words = list(vocabulary.values())
    found = {c: [words[i] for i in group] for c, group in zip(model.classes, chosen, strict=True)}
    empty = [c for c, group in found.items() if not group]
    if empty:
        raise VerbalizerError(
            f"no word is likelier for class(es) {empty} than for the others: the model's "
            "predictions at [MASK] do not tell them apart. Try another template."
        )
    return found


def check_search(
    model: PromptModel,
    examples: Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    per_class: int,
    candidates: int,
) -> None:
    """Everything a search needs, checked before any forward."""
    check_mask(model.template, "verbalizer")
    if not model.backbone.has_lm_head:
        raise ConfigError(
            f"{model.backbone.name} is loaded as an encoder without an LM head: label words "
            "are searched in an LM's predictions. Use an LM backbone."
        )
    check_labels(model.classes, examples, labels, per_class, candidates)


def check_labels(
    classes: Sequence[str],
    examples: Sequence[Any],
    labels: Sequence[Any],
    per_class: int,
    candidates: int,
) -> None:
    """What a search needs of its labelled examples and counts (checked before loading)."""
    if not 1 <= per_class <= candidates:
        raise ConfigError(
            f"per_class {per_class} and candidates {candidates}: give 1 <= per_class <= candidates."
        )
    if len(examples) != len(labels):
        raise DataError(f"{len(examples)} examples but {len(labels)} labels: give one each.")
    n_classes = len(classes)
    outside = [y for y in labels if _index(y) not in range(n_classes)]
    if outside:
        raise DataError(
            f"{len(outside)} of {len(labels)} labels are not class indices 0..{n_classes - 1} "
            f"(e.g. {outside[0]!r})."
        )
    counts = Counter(int(y) for y in labels)
    few = {c: counts[i] for i, c in enumerate(classes) if counts[i] < 2}
    if few:
        shown = ", ".join(f"{c}: {n}" for c, n in few.items())
        raise DataError(
            f"label words are searched from at least 2 examples per class; too few for {shown} "
            f"(of {len(labels)} examples). Give more labelled data."
        )


def _index(label: Any) -> int | None:
    """A label as an integer index (a Python, NumPy or 0-d tensor integer), else None."""
    try:
        return operator.index(label)
    except TypeError:
        return None


def whole_words(tokenizer: PreTrainedTokenizerBase, space: bool) -> dict[int, str]:
    """Token id -> word, for every token that is a whole word as the template puts it (after
    a space, or not): not special, alphabetic, 2+ letters, and the word tokenises back to
    exactly that one token. In id order."""
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    found = {}
    for i, text in zip(ids, texts, strict=True):
        word = text.strip()
        if len(word) >= 2 and word.isalpha() and word_tokens(tokenizer, word, space) == [i]:
            found[i] = word
    return found


def likelihood_ratios(
    log_probs: torch.Tensor, labels: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """``[C, V]``: for each class and token, ``log mean_{i in c} p_i - log mean_{all i} p_i``
    from log-probabilities ``[N, V]`` and class indices ``[N]``."""
    overall = log_probs.logsumexp(0) - torch.log(torch.tensor(float(len(log_probs))))
    per_class = []
    for c in range(n_classes):
        mine = log_probs[labels == c]
        per_class.append(mine.logsumexp(0) - torch.log(torch.tensor(float(len(mine)))))
    return torch.stack(per_class) - overall


def candidate_words(scores: torch.Tensor, candidates: int) -> list[list[int]]:
    """Each class's best ``candidates`` tokens by score (``[C, V]``), best first, among the
    tokens it scores highest of all classes (ties: the first class)."""
    owner = scores.argmax(0)
    groups = []
    for c in range(len(scores)):
        order = torch.sort(scores[c], descending=True, stable=True).indices
        groups.append([i for i in order.tolist() if owner[i] == c][:candidates])
    return groups


def training_accuracy(
    log_probs: torch.Tensor, labels: torch.Tensor, groups: Sequence[Sequence[int]]
) -> float:
    """Accuracy of the hard verbalizer with token groups ``groups`` (one per class, single
    tokens, mean of their probabilities) on log-probabilities ``[N, V]``."""
    width = max(len(g) for g in groups)
    ids = torch.zeros(len(groups), width, 1, dtype=torch.long)
    mask = torch.zeros(len(groups), width, 1, dtype=torch.bool)
    for c, group in enumerate(groups):
        ids[c, : len(group), 0] = torch.tensor(group, dtype=torch.long)
        mask[c, : len(group)] = True
    predicted = score_classes(log_probs, ids, mask).argmax(-1)
    return float((predicted == labels).float().mean())


def prune(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    groups: Sequence[Sequence[int]],
    per_class: int,
) -> list[list[int]]:
    """Up to ``per_class`` tokens of each class's candidates ``groups`` (best first), added
    greedily, one per class in turn, each the one that maximises training accuracy (ties:
    the earliest candidate). The first round starts every class from its best candidate
    and then replaces it by the best choice given the others."""
    chosen = [list(group[:1]) for group in groups]
    for round_ in range(per_class):
        for c, group in enumerate(groups):
            kept = chosen[c][:round_]
            options = [t for t in group if t not in kept]
            if not options:
                continue

            def accuracy(token: int, c: int = c, kept: list[int] = kept) -> float:
                trial = [*chosen[:c], [*kept, token], *chosen[c + 1 :]]
                return training_accuracy(log_probs, labels, trial)

            chosen[c] = [*kept, max(options, key=accuracy)]
    return chosen


def choose_words(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    per_class: int = 3,
    candidates: int = 50,
) -> list[list[int]]:
    """The search's choice from log-probabilities ``[N, V]`` and class indices ``[N]``: up
    to ``per_class`` token indices (columns of ``log_probs``) per class, no token in two
    classes (a class may get none when it scores no token highest)."""
    groups = candidate_words(likelihood_ratios(log_probs, labels, n_classes), candidates)
    if any(not group for group in groups):
        return [list(group) for group in groups]
    return prune(log_probs, labels, groups, per_class)


def with_classes(recipe: ModelConfig, classes: Sequence[str], words: Sequence[str]) -> ModelConfig:
    """``recipe`` with a verbalizer head over ``classes`` whose label words are placeholders.

    A verbalizer head takes its classes from its label words, and finding those words is the
    search's job, so it is built with one placeholder word per class (``words``: distinct
    words the tokenizer has, e.g. the first of ``whole_words``). They give the model its
    classes and nothing else: the search reads the LM's prediction over the whole
    vocabulary, never the head's words."""
    if len(words) < len(classes):
        raise VerbalizerError(
            f"the tokenizer has {len(words)} whole words, fewer than the {len(classes)} classes."
        )
    head = VerbalizerConfig(verbalizer={c: [w] for c, w in zip(classes, words, strict=False)})
    return recipe.model_copy(update={"head": head})


def named_classes(recipe: ModelConfig) -> list[str] | None:
    """The classes a recipe's head names, in order: its label words' or ``head.classes``
    (None: they come from the data)."""
    if getattr(recipe.head, "verbalizer", None) is not None:
        return recipe.head.words().classes
    return getattr(recipe.head, "classes", None)


def search_config(
    config: RunConfig,
    per_class: int = 3,
    candidates: int = 50,
    batch_size: int = 32,
    progress: bool | Report = False,
) -> dict[str, list[str]]:
    """Search label words on a run config's training split (as the run would train on it:
    few-shot sampled, validation held out), with its template, backbone and prompts as they
    start; the classes are the head's, else the data's (through ``data.label_map``)."""
    from promptkit.tasks import CLASSIFICATION
    from promptkit.text.data import load_splits
    from promptkit.text.model import build_model
    from promptkit.text.template import resolve_template as compile_template

    if getattr(config, "modality", "text") != "text":
        raise ConfigError("label words are searched for text runs: this config is not one.")
    recipe = config.recipe()
    if recipe.head.type not in LABEL_WORD_HEADS:
        raise ConfigError(
            f"label words are searched for a verbalizer head; this config's head is a "
            f"{recipe.head.type}: set `head: {{type: verbalizer}}`."
        )
    if getattr(recipe.head, "multi_label", False):
        raise ConfigError(
            "label words are searched on examples of one class each, and this config's head "
            "is multi-label: search them on single-label data."
        )
    template = compile_template(recipe.template)
    check_mask(template, "verbalizer")
    splits, classes = load_splits(
        config.data,
        CLASSIFICATION,
        named_classes(recipe),
        config.inputs,
        template.inputs,
        config.seed,
    )
    train = splits.train
    check_labels(classes, train.examples, train.labels, per_class, candidates)
    backbone = recipe.backbone.load()
    placeholders = list(whole_words(backbone.tokenizer, template.space_before_mask).values())
    model = build_model(with_classes(recipe, classes, placeholders), classes, backbone)
    return search_label_words(
        model, train.examples, train.labels, per_class, candidates, batch_size, progress
    )


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """That a verbalizer file can be written at ``path``: a new file (or, with
    ``overwrite``, an existing one) in a writable place."""
    from promptkit.core.run_folder import check_writable

    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists: write the words elsewhere, or overwrite it.")
    check_writable(path, "output", folder=False)
    return path


def write_verbalizer(
    path: str | Path, words: Mapping[str, Sequence[str]], description: str, overwrite: bool = False
) -> Path:
    """Write ``{description, words: {class: [words]}}`` (what ``head.verbalizer: path.yaml``
    reads) atomically; an existing file only with ``overwrite``."""
    from promptkit.core.run_folder import atomic_text

    path = check_output(path, overwrite)
    document = {"description": description, "words": {c: list(w) for c, w in words.items()}}
    try:
        atomic_text(path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    except OSError as err:
        raise ConfigError(f"{path} cannot be written ({err}): choose another --output.") from None
    return path
