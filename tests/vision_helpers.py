"""Tiny vision transformers and generated images for the vision tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTForImageClassification,
)

TINY_VIT = {
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 3,
    "num_heads": 2,
    "num_classes": 3,
}
TIMM_MODELS = {
    "vit": ("vit_tiny_patch16_224", TINY_VIT),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", TINY_VIT),
    "vit-registers": ("vit_tiny_patch16_224", {**TINY_VIT, "reg_tokens": 2, "global_pool": "avg"}),
}


def save_hf_vit(folder: Path) -> Path:
    """A tiny transformers ViTForImageClassification saved as a model folder."""
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    return folder


def save_dinov2(folder: Path, registers: int = 0) -> Path:
    """A tiny transformers DINOv2 (``Dinov2Model``, or with ``registers`` register tokens
    ``Dinov2WithRegistersModel``) saved as a model folder; its layer scales are random, as
    trained ones are, not the constant they start at."""
    shape = {
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "mlp_ratio": 2,
        "image_size": 16,
        "patch_size": 4,
    }
    if registers:
        model = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(**shape, num_register_tokens=registers)
        )
        torch.nn.init.normal_(model.embeddings.register_tokens)
    else:
        model = Dinov2Model(Dinov2Config(**shape))
    for name, parameter in model.named_parameters():
        if "lambda1" in name:
            torch.nn.init.uniform_(parameter, 0.1, 2.0)
    model.save_pretrained(folder)
    return folder


def write_images(root: Path, per_class: int, seed: int = 0, grey: bool = False) -> Path:
    """An image folder of two easy classes: bright and dark noisy squares."""
    rng = np.random.default_rng(seed)
    for label, level in (("bright", 200), ("dark", 55)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (20, 20) if grey else (20, 20, 3)
            pixels = np.clip(rng.normal(level, 30, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def vision_config(train: Path, test: Path | None, output: Path, **overrides) -> dict:
    """A small vision run config as a mapping."""
    name, kwargs = TIMM_MODELS["vit"]
    config = {
        "modality": "vision",
        "backbone": {"name": name, "kwargs": {**kwargs, "num_classes": 2}},
        "vpt": {"tokens": 4, "deep": True},
        "data": {
            "source": "image_folder",
            "train": str(train),
            **({"test": str(test)} if test else {}),
        },
        "trainer": {
            "epochs": 3,
            "batch_size": 8,
            "progress": False,
            "lr": {"prompts": 0.05, "head": 0.05},
        },
        "output_dir": str(output),
    }
    config.update(overrides)
    return config
