"""promptkit: prompt learning on transformers and timm.

>>> import promptkit
>>> predictor = promptkit.load("runs/sentiment")          # doctest: +SKIP
>>> predictor.predict(["a gripping, beautifully shot film"])  # doctest: +SKIP
['positive']
"""

from promptkit.backbone import Backbone, load_backbone
from promptkit.config import ModelConfig, RunConfig, load_config
from promptkit.errors import (
    BackboneMismatchError,
    ConfigError,
    DataError,
    PromptkitError,
    TemplateError,
    TrainingError,
    VerbalizerError,
)
from promptkit.model import PromptModel, build_model
from promptkit.pipeline import fit
from promptkit.prompts import SoftPrompts
from promptkit.run import Predictor, load
from promptkit.template import Template
from promptkit.verbalizer import Verbalizer

__version__ = "0.1.0"
__all__ = [
    "Backbone",
    "BackboneMismatchError",
    "ConfigError",
    "DataError",
    "ModelConfig",
    "Predictor",
    "PromptModel",
    "PromptkitError",
    "RunConfig",
    "SoftPrompts",
    "Template",
    "TemplateError",
    "TrainingError",
    "Verbalizer",
    "VerbalizerError",
    "build_model",
    "fit",
    "load",
    "load_backbone",
    "load_config",
]
