"""Heads: what turns a backbone forward into answers. Each is a ``Head`` subclass in its own
module, with its config section and its task; registering it is one line here.

- ``verbalizer``: label words scored from the LM's prediction at [MASK] (cloze);
- ``knowledgeable``: many label words per class, refined and calibrated by their prior (KPT);
- ``soft_verbalizer``: a trainable vector per class against the state at [MASK] (WARP);
- ``classifier``: a linear layer on a pooled hidden state ([CLS], mean, [MASK], last);
- ``token``: a linear layer on the first sub-token of every input word (tagging);
- ``generation``: a text answer, learned by teacher forcing and written by ``generate()``.
"""

from __future__ import annotations

from promptkit.core.config import tagged_union
from promptkit.core.registry import Registry
from promptkit.text.heads.base import Head
from promptkit.text.heads.classifier import ClassifierHead
from promptkit.text.heads.generation import GenerationHead
from promptkit.text.heads.knowledgeable import KnowledgeableVerbalizerHead
from promptkit.text.heads.soft_verbalizer import SoftVerbalizerHead
from promptkit.text.heads.token import TokenClassifierHead
from promptkit.text.heads.verbalizer import LabelWordsConfig, VerbalizerHead

HEADS: Registry[type[Head]] = Registry(
    "head",
    (
        VerbalizerHead,
        KnowledgeableVerbalizerHead,
        SoftVerbalizerHead,
        ClassifierHead,
        TokenClassifierHead,
        GenerationHead,
    ),
    key="type",
)
# The heads that read label words at [MASK] (their section names a verbalizer).
LABEL_WORD_HEADS = tuple(t for t, cls in HEADS.items() if issubclass(cls.config, LabelWordsConfig))
# The `head` section of a text recipe: one member per head, told apart by `type`.
HeadConfigs = tagged_union([cls.config for cls in HEADS.values()], "type", "verbalizer")

__all__ = ["HEADS", "LABEL_WORD_HEADS", "Head", "HeadConfigs"]
