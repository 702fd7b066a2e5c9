"""VisionPromptModel: a vision transformer with visual prompts (VPT) and a linear head."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from transformers import ViTForImageClassification

from promptkit.backbone import FINGERPRINT_SCHEME, fingerprint
from promptkit.errors import ConfigError
from promptkit.layers import select_layers
from promptkit.policy import PolicyModule, parameter_groups
from promptkit.prompts import SoftPrompts
from promptkit.seeding import seeded
from promptkit.tasks import CLASSIFICATION
from promptkit.vision.config import VisionBackboneConfig, VisionModelConfig
from promptkit.vision.data import image_transform
from promptkit.vision.injection import VisualPromptInjector, ViTAdapter, adapter_for


class VisionPromptModel(PolicyModule):
    """A ViT with prompt tokens: ``model(batch)`` gives logits over ``model.classes``.

    Args:
        adapter: the backbone, through its family's adapter.
        prompts: ``len(layers) * tokens`` vectors.
        layers: the blocks that get prompts (shallow: the first only).
        tokens: prompt tokens per prompted block.
        classes: the label names.
        trainable: the policy ("prompts", "head", "bias", "all").
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
    ) -> None:
        super().__init__()
        self.vit = adapter.model
        self.prompts = prompts
        self.adapter = adapter
        self.layers, self.tokens, self.classes = list(layers), tokens, list(classes)
        self.injector = VisualPromptInjector(adapter)
        self.transform = image_transform(adapter.data_config())
        self.groups = parameter_groups(prompts, adapter.classifier(), adapter.model, trainable)

    def data_columns(self) -> list[str]:
        """A row's image."""
        return ["image"]

    def enable_checkpointing(self) -> None:
        """Recompute the blocks' activations in the backward pass (less memory)."""
        self.adapter.enable_checkpointing()

    def examples(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Images (paths, PIL images, arrays) or rows with an ``image`` field, as examples."""
        return [dict(item) if isinstance(item, dict) else {"image": item} for item in items]

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
        self.injector.set_prompts(
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
    ViTForImageClassification (folder or hub id)."""
    source = config.source
    if source == "auto":
        source = "transformers" if (Path(config.name) / "config.json").is_file() else "timm"
    if source == "transformers":
        return ViTForImageClassification.from_pretrained(config.name)
    if config.checkpoint and not Path(config.checkpoint).is_file():
        raise ConfigError(f"backbone.checkpoint {config.checkpoint}: no such file")
    overlay = {"file": config.checkpoint} if config.checkpoint else None
    # No head: promptkit adds a new one, and timm then skips the checkpoint's classifier.
    kwargs = {**config.kwargs, "num_classes": 0}
    return timm.create_model(
        config.name,
        pretrained=config.pretrained or bool(overlay),
        pretrained_cfg_overlay=overlay,
        **kwargs,
    )


def build_vision_model(recipe: VisionModelConfig, classes: Sequence[str]) -> VisionPromptModel:
    """Build a VisionPromptModel from its recipe, with a new head of one output per class.

    Random weights (the head, a backbone without pretrained weights) are seeded by the recipe,
    so a run reloads onto the same model.
    """
    vpt = recipe.vpt
    with seeded(recipe.seed) as generator:
        adapter = adapter_for(load_vision_backbone(recipe.backbone))
        layers = select_layers(vpt.layers, len(adapter.blocks)) if vpt.deep else [0]
        prompts = SoftPrompts(len(layers) * vpt.tokens, adapter.dim, dropout=vpt.dropout)
        # VPT's initialisation: uniform, bounded as Xavier for a patch projection.
        bound = math.sqrt(6.0 / (3 * adapter.patch_area + adapter.dim))
        nn.init.uniform_(prompts.table, -bound, bound, generator=generator)
        adapter.reset_head(len(classes), recipe.head.pool)
    return VisionPromptModel(adapter, prompts, layers, vpt.tokens, classes, recipe.trainable)
