"""What a modality provides to the rest of promptkit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # torch and the rest load only when a modality is used
    from pydantic import BaseModel

    from promptkit.core.data import Splits
    from promptkit.core.trainable import TrainableModule


@dataclass
class Prepared:
    """A model ready to train on its data, and the fingerprint of its untouched backbone."""

    model: TrainableModule
    splits: Splits
    fingerprint: str


class Modality:
    """Base of the modalities. Importing one loads nothing heavy: its methods import what
    they use."""

    name: ClassVar[str]
    presets: ClassVar[str]  # the catalog of its method presets

    def run_schema(self) -> type[BaseModel]:
        """The schema of a run config."""
        raise NotImplementedError

    def recipe_schema(self) -> type[BaseModel]:
        """The schema of a saved recipe."""
        raise NotImplementedError

    def saved_recipe(self, document: dict[str, Any]) -> Any:
        """The recipe of a run's promptkit.json (of any format this promptkit wrote)."""
        return self.recipe_schema().model_validate(document["recipe"])

    def load_data(self, config: Any) -> tuple[Splits, list[str]]:
        """Check the config's recipe, read and split its data, as ``prepare`` does without
        loading a model: the splits and the class names."""
        raise NotImplementedError

    def prepare(self, config: Any, backbone: Any = None) -> Prepared:
        """Check the config, read and split its data, build its model (``backbone``: an
        already loaded one, where the modality takes it)."""
        raise NotImplementedError

    def build(self, recipe: Any, classes: Sequence[str], backbone: Any = None) -> TrainableModule:
        """The model of a saved recipe, ready for its trained parameters."""
        raise NotImplementedError

    def read_inputs(self, spec: str) -> list[dict[str, Any]]:
        """What to predict on: rows read from a file (or, as the modality allows, a folder)."""
        raise NotImplementedError

    def read_labelled(self, data: Any, spec: str) -> tuple[list[dict[str, Any]], str]:
        """Labelled rows to score a run on, and their label column (``data``: the run's
        data config)."""
        raise NotImplementedError

    def data_schema(self) -> type[BaseModel]:
        """The schema of the data section."""
        return self.run_schema().model_fields["data"].annotation
