"""Image data: a folder per class, Fashion-MNIST's IDX files, scikit-learn's digits, or a data
set with an image column. Rows come out as ``{"image": path | PIL image | array, "label": ...}``.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform

from promptkit.core.data import (
    Splits,
    build_splits,
    enough_classes,
    mapped_labels,
    read_splits,
    validate_rows,
)
from promptkit.core.readers import read_rows
from promptkit.errors import DataError
from promptkit.tasks import CLASSIFICATION
from promptkit.vision.config import ImageDataConfig

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image_splits(data: ImageDataConfig, seed: int) -> tuple[Splits, list[str]]:
    """Read, label, split and sample image data; returns the splits and the class names
    (``data.classes``, else every label of the training data, sorted)."""
    rows = read_splits(
        data,
        lambda spec: validate_rows(
            read_image_rows(data, spec), spec, ["image"], "label", data.invalid
        ),
    )
    names = mapped_labels(rows["train"], CLASSIFICATION, "label", data.label_map)
    unknown = sorted(set(data.classes or []) - set(names))
    if unknown:
        raise DataError(
            f"data.classes names {unknown}, which the training data lacks (it has "
            f"{sorted(set(names))})."
        )
    classes = data.classes or sorted(set(names))
    enough_classes(CLASSIFICATION, classes, names)
    kept = {
        name: [
            row
            for row, label in zip(
                r, mapped_labels(r, CLASSIFICATION, "label", data.label_map), strict=True
            )
            if label in classes
        ]
        for name, r in rows.items()
    }
    return build_splits(kept, data, CLASSIFICATION, classes, lambda r: r, "label", seed), classes


def read_image_rows(data: ImageDataConfig, split: str) -> list[dict[str, Any]]:
    """The rows of one split. ``split`` is a folder (image_folder), ``train`` / ``test``
    (fashion_mnist, digits: every fifth image is test) or a split name (dataset)."""
    readers: dict[str, Callable[[ImageDataConfig, str], list[dict[str, Any]]]] = {
        "image_folder": _image_folder,
        "fashion_mnist": _fashion_mnist,
        "digits": _digits,
        "dataset": _dataset,
    }
    return readers[data.source](data, split)


def _image_folder(_data: ImageDataConfig, split: str) -> list[dict[str, Any]]:
    root = Path(split)
    if not root.is_dir():
        raise DataError(f"{split}: no such folder (an image folder has one sub-folder per class)")
    rows = [
        {"image": str(f), "label": d.name}
        for d in sorted(root.iterdir())
        if d.is_dir()
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not rows:
        raise DataError(f"{split}: no images found in its class sub-folders")
    return rows


def _fashion_mnist(data: ImageDataConfig, split: str) -> list[dict[str, Any]]:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"fashion_mnist has the splits train and test, not {split!r}")
    folder = Path(data.path or FASHION_MNIST_DIR)
    images_file = folder / f"{prefix}-images-idx3-ubyte.gz"
    if not images_file.is_file():
        raise DataError(
            f"{images_file} is missing: install Debian's dataset-fashion-mnist "
            "package, or set data.path to the folder of the IDX files."
        )
    with gzip.open(images_file) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return [
        {"image": image, "label": FASHION_MNIST_CLASSES[y]}
        for image, y in zip(images, labels, strict=True)
    ]


def _digits(_data: ImageDataConfig, split: str) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise DataError(f"digits has the splits train and test, not {split!r}")
    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)
    keep = [i for i in range(len(images)) if (i % 5 == 0) == (split == "test")]
    return [{"image": images[i], "label": str(digits.target[i])} for i in keep]


def _dataset(data: ImageDataConfig, split: str) -> list[dict[str, Any]]:
    if not data.dataset:
        raise DataError("source: dataset needs data.dataset (a hub name or a local folder)")
    rows = read_rows(split, data.dataset, data.subset)
    missing = {data.image_column, data.label_column} - set(rows[0] if rows else ())
    if missing:
        raise DataError(
            f"{data.dataset} ({split}) has no column {sorted(missing)}: set "
            "data.image_column / data.label_column."
        )
    return [{"image": r[data.image_column], "label": r[data.label_column]} for r in rows]


def to_rgb(image: Any) -> Image.Image:
    """A path, PIL image or array as an RGB PIL image (grey images get three channels)."""
    if isinstance(image, dict):  # a datasets Image feature read as plain data
        image = (image.get("bytes") and io.BytesIO(image["bytes"])) or image["path"]
    if isinstance(image, (str, Path, io.BytesIO)):
        image = _opened(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise DataError(
            f"cannot read an image from {type(image).__name__}: give a path, a PIL "
            "image or an array."
        )
    return image.convert("RGB")


def _opened(source: str | Path | io.BytesIO) -> Image.Image:
    """An image file, read whole (so a damaged one fails here, not later)."""
    try:
        image = Image.open(source)
        image.load()
    except (OSError, Image.DecompressionBombError) as err:  # missing, not an image, cut short
        shown = "an image in the data" if isinstance(source, io.BytesIO) else str(source)
        raise DataError(f"{shown} cannot be read as an image ({err}): fix or remove it.") from None
    return image


def image_transform(data_config: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """The evaluation transform of a backbone's data config, for any image input."""
    transform = create_transform(**data_config, is_training=False)
    return lambda image: transform(to_rgb(image))
