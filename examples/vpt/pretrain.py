"""Pretrain the backbone of the VPT example: a small timm ViT on Fashion-MNIST classes 0-4.

From the repository root:  python examples/vpt/pretrain.py

No pretrained ViT can be had offline, so the example makes its own: pretrain.yaml trains it
from scratch with promptkit (full training, no prompts), then this script saves the ViT's
weights as a timm checkpoint file, .assets/vit-fmnist-0to4.safetensors, which the VPT recipes
load through timm's own local-file path (`backbone.checkpoint`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from safetensors.torch import save_file

import promptkit
from promptkit.core.run_folder import atomic_write
from promptkit.vision.data import FASHION_MNIST_DIR

HERE = Path(__file__).resolve().parent
CHECKPOINT = Path(".assets/vit-fmnist-0to4.safetensors")


def ensure_fashion_mnist() -> None:
    """Fashion-MNIST comes from Debian's dataset-fashion-mnist package."""
    if not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file():
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True)


def pretrain(checkpoint: Path = CHECKPOINT) -> Path:
    """Train the backbone unless its checkpoint exists; return the checkpoint's path."""
    if checkpoint.is_file():
        return checkpoint
    ensure_fashion_mnist()
    config = promptkit.load_config(HERE / "pretrain.yaml")
    result = promptkit.fit(config, overwrite=True)
    print(f"classes 0-4 test accuracy: {result.test['accuracy']:.3f}")
    state = {k: v.contiguous() for k, v in result.predictor.model.vit.state_dict().items()}
    atomic_write(checkpoint, lambda path: save_file(state, str(path)))
    print(f"backbone saved to {checkpoint}")
    return checkpoint


if __name__ == "__main__":
    pretrain()
