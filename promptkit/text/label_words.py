"""Verbalizers: label words per class, scored from the LM's prediction at [MASK].

Scoring, for each example:
1. log-probabilities over the vocabulary at the [MASK] position (for a causal LM: the
   next-token distribution of the last token before [MASK]);
2. each label word: its tokens' log-probabilities at that one position, averaged
   (``multi_token: mean``) or only the first token's (``first``). A multi-token word is thus
   scored by its pieces as alternatives at the same slot; ``multi_token: decode`` reads it
   token by token instead (``promptkit.text.heads.word_decoding``);
3. each class: the mean of its words' probabilities (``aggregate: mean``, in log space) or
   the best word (``max``).
The class scores are logits for a cross-entropy over classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from promptkit.errors import VerbalizerError
from promptkit.text.encoding import word_tokens


class Verbalizer:
    """Label words per class.

    Args:
        words: class name -> its label words (a single word may be given as a string).
    """

    def __init__(self, words: Mapping[str, Sequence[str] | str]) -> None:
        if not words:
            raise VerbalizerError("the verbalizer has no classes: give `{class: [words]}`.")
        self.words: dict[str, list[str]] = {}
        for label, group in words.items():
            group = [group] if isinstance(group, str) else list(group)
            if not group:
                raise VerbalizerError(f"class {label!r} has no label words: give it at least one.")
            if any(not isinstance(w, str) or not w.strip() for w in group):
                raise VerbalizerError(f"class {label!r} has an empty label word: {group!r}.")
            self.words[str(label)] = [w.strip() for w in group]
        if len(self.words) < 2:
            raise VerbalizerError(
                f"the verbalizer has one class ({self.classes[0]!r}): give it two or more."
            )
        seen: dict[str, str] = {}
        for label, group in self.words.items():
            for word in group:
                if seen.get(word, label) != label:
                    raise VerbalizerError(
                        f"label word {word!r} belongs to {seen[word]!r} and {label!r}: a word "
                        "cannot tell two classes apart. Give each class its own words."
                    )
                seen[word] = label

    @property
    def classes(self) -> list[str]:
        """The class names, in order."""
        return list(self.words)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Verbalizer:
        """Read ``{class: [words]}`` from a YAML file (a top-level ``words:`` key is allowed)."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VerbalizerError(f"{path}: no such verbalizer file.") from None
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise VerbalizerError(f"{path}: not a readable YAML file: {err}") from None
        if isinstance(data, dict) and "words" in data:
            data = data["words"]
        if not isinstance(data, dict):
            raise VerbalizerError(f"{path}: expected a mapping of class -> label words.")
        return cls(data)

    def token_ids(
        self, tokenizer: PreTrainedTokenizerBase, space_before: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pieces of every word, padded: ids ``[C, W, T]`` and a mask of real pieces.

        Args:
            tokenizer: the backbone's tokenizer.
            space_before: the template has a space before [MASK], so words are tokenised as
                they appear after a space (" great").
        """
        pieces = [
            [self._pieces(tokenizer, label, w, space_before) for w in group]
            for label, group in self.words.items()
        ]
        n_words = max(len(g) for g in pieces)
        n_pieces = max(len(p) for g in pieces for p in g)
        ids = torch.zeros(len(pieces), n_words, n_pieces, dtype=torch.long)
        mask = torch.zeros(len(pieces), n_words, n_pieces, dtype=torch.bool)
        for c, group in enumerate(pieces):
            for w, word in enumerate(group):
                ids[c, w, : len(word)] = torch.tensor(word)
                mask[c, w, : len(word)] = True
        return ids, mask

    @staticmethod
    def _pieces(
        tokenizer: PreTrainedTokenizerBase, label: str, word: str, space: bool
    ) -> list[int]:
        ids = word_tokens(tokenizer, word, space)
        if ids is None:
            raise VerbalizerError(
                f"label word {word!r} of class {label!r} cannot be tokenised "
                "by this backbone's tokenizer (it maps to unknown). Pick "
                "another word."
            )
        return ids


def word_scores(
    log_probs: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, multi_token: str = "mean"
) -> torch.Tensor:
    """Each label word's log-probability ``[B, C, W]`` from log-probabilities ``[B, V]``
    (``-inf`` where a class has fewer words)."""
    pieces = log_probs[:, ids]  # [B, C, W, T]
    if multi_token == "first":
        words = pieces[..., 0]
    else:
        words = (pieces * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return words.masked_fill(~mask[..., 0], -math.inf)


def score_classes(
    log_probs: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    multi_token: str = "mean",
    aggregate: str = "mean",
) -> torch.Tensor:
    """Class scores ``[B, C]`` from log-probabilities ``[B, V]`` (see the module docstring)."""
    return class_scores(word_scores(log_probs, ids, mask, multi_token), mask[..., 0], aggregate)


def class_scores(words: torch.Tensor, has_word: torch.Tensor, aggregate: str) -> torch.Tensor:
    """Class scores ``[B, C]`` from word log-probabilities ``[B, C, W]``: the mean of the
    words' probabilities (in log space), or the best word's."""
    if aggregate == "max":
        return words.max(-1).values
    return words.logsumexp(-1) - has_word.sum(-1).log()
