"""VisionPromptModel: a vision transformer with visual prompts (VPT) and a linear head."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from torch import nn

from promptkit.backbone.layers import select_layers
from promptkit.backbone.loading import FINGERPRINT_SCHEME, fingerprint, parameter_count
from promptkit.core import hub
from promptkit.core.progress import timed
from promptkit.core.seeding import seeded
from promptkit.core.soft_prompts import SoftPrompts
from promptkit.core.trainable import TrainableModule, parameter_groups
from promptkit.errors import ConfigError, DataError
from promptkit.tasks import CLASSIFICATION
from promptkit.vision.config import ImageConfig, VisionBackboneConfig, VisionModelConfig
from promptkit.vision.data import image_transform
from promptkit.vision.placement import (
    VisualPromptPlacement,
    ViTAdapter,
    adapter_for,
    load_transformers_vit,
    transformers_adapter,
)


class VisionPromptModel(TrainableModule):
    """A ViT with prompt tokens: ``model(batch)`` gives logits over ``model.classes``.

    Args:
        adapter: the backbone, through its family's adapter.
        prompts: ``len(layers) * tokens`` vectors.
        layers: the blocks that get prompts (shallow: the first only).
        tokens: prompt tokens per prompted block.
        classes: the label names.
        trainable: the groups that train ("prompts", "head", "bias", "norm", "all").
        image: the input size and fit (default: the backbone's own).
    """

    task = CLASSIFICATION

    def __init__(
        self,
        adapter: ViTAdapter,
        prompts: SoftPrompts,
        layers: Sequence[int],
        tokens: int,
        classes: Sequence[str],
        trainable: Sequence[str],
        image: ImageConfig | None = None,
    ) -> None:
        super().__init__()
        self.vit = adapter.model
        self.prompts = prompts
        self.adapter = adapter
        self.layers, self.tokens, self.classes = list(layers), tokens, list(classes)
        self.placement = VisualPromptPlacement(adapter)
        self.transform = image_transform(adapter.data_config(image))
        self.groups = parameter_groups(prompts, adapter.classifier(), adapter.model, trainable)

    def data_columns(self) -> list[str]:
        """A row's image."""
        return ["image"]

    def enable_checkpointing(self) -> None:
        """Recompute the blocks' activations in the backward pass (less memory)."""
        self.adapter.enable_checkpointing()

    def examples(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Images (paths, PIL images, arrays) or rows with an ``image`` field, as examples."""
        examples = [dict(item) if isinstance(item, dict) else {"image": item} for item in items]
        for number, example in enumerate(examples):
            if "image" not in example:
                raise DataError(
                    f"item {number + 1} has no 'image' field (it has {sorted(example)}): give "
                    "image paths, or rows with an image column named 'image'."
                )
        return examples

    def encode(
        self, examples: Sequence[dict[str, Any]], labels: Sequence[Any] | None = None
    ) -> list[torch.Tensor]:
        """Each image through the backbone's own transform (labels go in at collate)."""
        return [self.transform(example["image"]) for example in examples]

    def collate(
        self, encoded: Sequence[torch.Tensor], labels: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Stack images into a batch."""
        batch = {"pixel_values": torch.stack(list(encoded))}
        if labels is not None:
            self.task.add_labels(batch, labels)
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        table = self.prompts().view(len(self.layers), self.tokens, -1) if self.tokens else None
        self.placement.set_prompts(
            {} if table is None else dict(zip(self.layers, table, strict=True))
        )
        return self.adapter.logits(batch["pixel_values"])

    def fingerprint(self, scheme: int = FINGERPRINT_SCHEME) -> str:
        """Of the backbone's architecture and weights (the head excluded)."""
        head = {id(p) for p in self.adapter.classifier().parameters()}
        weights = [(n, p) for n, p in self.vit.named_parameters() if id(p) not in head]
        return fingerprint(type(self.vit).__name__, weights, scheme)


def load_vision_backbone(config: VisionBackboneConfig) -> nn.Module:
    """A timm ViT (by name, published weights or a local checkpoint file) or a transformers
    model of a family VPT serves (folder or hub id)."""
    if _is_transformers(config):
        _no_timm_settings(config)
        return load_transformers_vit(config.name)
    checkpoint = _timm_weights(config)
    overlay = {"file": config.checkpoint} if config.checkpoint else None
    # No head: promptkit adds a new one, and timm then skips the checkpoint's classifier.
    kwargs = {**config.kwargs, "num_classes": 0}
    try:
        model = timm.create_model(
            config.name,
            pretrained=config.pretrained or bool(overlay),
            pretrained_cfg_overlay=overlay,
            **kwargs,
        )
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise ConfigError(
            f"timm cannot build {config.name!r} with kwargs {config.kwargs} ({err}): check the "
            "name (timm.list_models('vit_*')) and the kwargs."
        ) from None
    if checkpoint is not None:
        _fits(model, checkpoint, config.checkpoint)
    return model


def vision_parameter_count(config: VisionBackboneConfig) -> int:
    """How many parameters the backbone has, with everything ``load_vision_backbone`` checks
    checked, but no weight read: a transformers model from its config, a timm model built on
    the meta device (a checkpoint file is read for its weights' names only)."""
    if _is_transformers(config):
        _no_timm_settings(config)
        transformers_adapter(config.name)
        return parameter_count(config.name, "encoder")
    checkpoint = _timm_weights(config)
    with torch.device("meta"):
        bare = config.model_copy(update={"pretrained": False, "checkpoint": None})
        model = load_vision_backbone(bare)
    if checkpoint is not None:
        _fits(model, checkpoint, config.checkpoint)
    return sum(p.numel() for p in model.parameters())


def _is_transformers(config: VisionBackboneConfig) -> bool:
    if config.source == "auto":
        return (Path(config.name) / "config.json").is_file()
    return config.source == "transformers"


def _timm_weights(config: VisionBackboneConfig) -> set[str] | None:
    """The names of the weights in the backbone's checkpoint file (None: no file), once its
    weights are known to be at hand (a readable file, or published weights cached or
    reachable)."""
    checkpoint = _checkpoint_keys(config.checkpoint) if config.checkpoint else None
    if config.pretrained and not _cached_weights(config.name) and not hub.reachable():
        raise ConfigError(
            f"backbone.pretrained: {config.name}'s published weights come from the Hugging Face "
            "hub, which cannot be reached from here: give a local backbone.checkpoint file."
        )
    return checkpoint


def _cached_weights(name: str) -> bool:
    """Whether timm's published weights of ``name`` are in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    files = ("model.safetensors", "pytorch_model.bin")
    return bool(hub_id) and any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in files)


def _no_timm_settings(config: VisionBackboneConfig) -> None:
    """A transformers ViT takes none of timm's settings: given, they would be ignored."""
    given = [k for k in ("kwargs", "checkpoint", "pretrained") if getattr(config, k)]
    if given:
        raise ConfigError(
            f"backbone {config.name} is a transformers model, which takes no backbone."
            f"{', backbone.'.join(given)} (timm settings): drop them, or save the model you "
            "want as a transformers folder."
        )


def _checkpoint_keys(path: str) -> set[str]:
    """The names of the weights a checkpoint file holds (safetensors or torch)."""
    if not Path(path).is_file():
        raise ConfigError(f"backbone.checkpoint {path}: no such file")
    try:
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as weights:
                return set(weights.keys())
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch.load raise many kinds on a bad file
        raise ConfigError(
            f"backbone.checkpoint {path} cannot be read ({type(err).__name__}): give a "
            "safetensors or torch weights file."
        ) from None
    if not isinstance(state, dict):
        return set()
    wrapped = (state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict))
    return {key.removeprefix("module.") for key in next(wrapped, state)}


def _fits(model: nn.Module, keys: set[str], path: str) -> None:
    """Most of the backbone's weights must come from the checkpoint (else it trains a random
    ViT)."""
    expected = set(model.state_dict())
    found = expected & keys
    if len(found) * 2 < len(expected):
        lacking = sorted(expected - keys)
        raise ConfigError(
            f"backbone.checkpoint {path} does not fit {type(model).__name__}: it holds "
            f"{len(found)} of its {len(expected)} weights (it lacks {lacking[0]}, ...). Give a "
            "checkpoint of this model, with the same backbone.kwargs."
        )


def build_vision_model(recipe: VisionModelConfig, classes: Sequence[str]) -> VisionPromptModel:
    """Build a VisionPromptModel from its recipe, with a new head of one output per class.

    Random weights (the head, a backbone without pretrained weights) are seeded by the recipe,
    so a run reloads onto the same model.
    """
    vpt = recipe.vpt
    with seeded(recipe.seed) as generator:
        with timed(f"loading backbone {recipe.backbone.name}"):
            adapter = adapter_for(load_vision_backbone(recipe.backbone))
        layers = select_layers(vpt.layers, len(adapter.blocks)) if vpt.deep else [0]
        prompts = SoftPrompts(len(layers) * vpt.tokens, adapter.dim, dropout=vpt.dropout)
        # VPT's initialisation: uniform, bounded as Xavier for a patch projection.
        bound = math.sqrt(6.0 / (3 * adapter.patch_area + adapter.dim))
        nn.init.uniform_(prompts.table, -bound, bound, generator=generator)
        adapter.reset_head(len(classes), recipe.head.pool)
    return VisionPromptModel(
        adapter, prompts, layers, vpt.tokens, classes, recipe.trainable, recipe.image
    )
