"""promptkit: prompt learning on transformers and timm.

>>> import promptkit
>>> predictor = promptkit.load("runs/sentiment")          # doctest: +SKIP
>>> predictor.predict(["a gripping, beautifully shot film"])  # doctest: +SKIP
['positive']

The names below load on first use, so ``import promptkit`` (and the command line) start
without importing torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# torchao (which transformers imports where it is installed) registers two enums with torch's
# pytree, and torch answers each with a deprecation line meant for torchao: not for our users.
logging.getLogger("torch.utils._pytree").addFilter(
    lambda record: "is an Enum subclass" not in record.getMessage()
)

_EXPORTS = {
    "Backbone": "promptkit.backbone",
    "load_backbone": "promptkit.backbone",
    "ModelConfig": "promptkit.recipe",
    "RunConfig": "promptkit.recipe",
    "load_config": "promptkit.run_config",
    "validate_config": "promptkit.run_config",
    "BackboneMismatchError": "promptkit.errors",
    "ConfigError": "promptkit.errors",
    "DataError": "promptkit.errors",
    "PromptkitError": "promptkit.errors",
    "TemplateError": "promptkit.errors",
    "TrainingError": "promptkit.errors",
    "VerbalizerError": "promptkit.errors",
    "PromptModel": "promptkit.model",
    "build_model": "promptkit.model",
    "fit": "promptkit.api",
    "SoftPrompts": "promptkit.prompts",
    "Predictor": "promptkit.predictor",
    "load": "promptkit.api",
    "Host": "promptkit.host",
    "Ensemble": "promptkit.ensemble",
    "RunFolder": "promptkit.run_folder",
    "Template": "promptkit.template",
    "Verbalizer": "promptkit.verbalizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:  # a submodule, e.g. promptkit.config
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'promptkit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*globals(), *_EXPORTS]
