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
import warnings
from typing import Any

__version__ = "0.1.0"

# torchao (which transformers imports where it is installed) registers two enums with torch's
# pytree, and torch answers each with a deprecation line meant for torchao: not for our users.
logging.getLogger("torch.utils._pytree").addFilter(
    lambda record: "is an Enum subclass" not in record.getMessage()
)

_EXPORTS = {
    "Backbone": "promptkit.backbone.loading",
    "load_backbone": "promptkit.backbone.loading",
    "ModelConfig": "promptkit.text.config",
    "RunConfig": "promptkit.text.config",
    "load_config": "promptkit.runs.config",
    "validate_config": "promptkit.runs.config",
    "BackboneMismatchError": "promptkit.errors",
    "ConfigError": "promptkit.errors",
    "DataError": "promptkit.errors",
    "PromptkitError": "promptkit.errors",
    "TemplateError": "promptkit.errors",
    "TrainingError": "promptkit.errors",
    "VerbalizerError": "promptkit.errors",
    "PromptModel": "promptkit.text.model",
    "build_model": "promptkit.text.model",
    "fit": "promptkit.api",
    "SoftPrompts": "promptkit.core.soft_prompts",
    "Predictor": "promptkit.serving.predictor",
    "load": "promptkit.api",
    "Host": "promptkit.serving.host",
    "RunEnsemble": "promptkit.serving.run_ensemble",
    "RunFolder": "promptkit.core.run_folder",
    "Template": "promptkit.text.template",
    "Verbalizer": "promptkit.text.label_words",
}
__all__ = sorted(_EXPORTS)
_FORMER_NAMES = {"Ensemble": "RunEnsemble"}


def __getattr__(name: str) -> Any:
    if name in _FORMER_NAMES:
        new = _FORMER_NAMES[name]
        warnings.warn(f"promptkit.{name} is now promptkit.{new}", DeprecationWarning, stacklevel=2)
        return __getattr__(new)
    if name not in _EXPORTS:  # a submodule, e.g. promptkit.core.config
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'promptkit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return [*globals(), *_EXPORTS]
