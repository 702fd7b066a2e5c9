"""Visual prompts in vision transformers (VPT). The backbone-specific code lives here.

A ``ViTAdapter`` knows one family (timm's VisionTransformer, transformers'
ViTForImageClassification, transformers' DINOv2 with or without registers): its blocks, final
norm, prefix tokens, head and input size. A transformers family is registered under its
config's ``model_type`` (``@transformers_family``), which is how a model folder finds it.
``VisualPromptPlacement`` works through forward pre-hooks, so the backbone keeps its own
forward (and activation checkpointing): prompt tokens are inserted after the class/register
tokens before the first prompted block (after position embeddings and patch dropout), replace
the previous prompts before each later prompted block (VPT-deep), and are removed before the
final norm, so pooling and the head never see them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    Dinov2ForImageClassification,
    Dinov2WithRegistersForImageClassification,
    ViTForImageClassification,
)

from promptkit.backbone.layers import WithoutAutograd
from promptkit.core.trainable import first_trained_layer
from promptkit.errors import ConfigError, PromptkitError
from promptkit.vision.config import ImageConfig

# How each image fit maps onto timm's evaluation transform: (crop_mode, crop_pct or None for
# the family's own).
_FITS = {"crop": ("center", None), "letterbox": ("border", 1.0), "squash": ("squash", 1.0)}


class ViTAdapter:
    """What promptkit needs to know of one vision-transformer family."""

    model: nn.Module
    blocks: Sequence[nn.Module]
    final_norm: nn.Module
    n_prefix: int  # class (and register / distillation) tokens before the patches
    any_size: ClassVar[bool] = False  # takes other input sizes (resizing its position grid)

    @property
    def dim(self) -> int:
        """Token width."""
        raise NotImplementedError

    @property
    def patch_area(self) -> int:
        """Pixels per patch side squared (for VPT's initialisation bound)."""
        raise NotImplementedError

    @property
    def image_size(self) -> tuple[int, int]:
        """Input height and width."""
        raise NotImplementedError

    def classifier(self) -> nn.Module:
        """The head module."""
        raise NotImplementedError

    def reset_head(self, n_classes: int, pool: str) -> None:
        """A new linear head over ``pool`` ("token" or "avg") with one output per class."""
        raise NotImplementedError

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's own forward, to logits."""
        raise NotImplementedError

    def own_data_config(self) -> dict[str, Any]:
        """The family's timm-style data config: input_size, mean, std, interpolation,
        crop_pct (and crop_mode)."""
        raise NotImplementedError

    def data_config(self, image: ImageConfig | None = None) -> dict[str, Any]:
        """The data config with ``image``'s size and fit applied (if given)."""
        config = self.own_data_config()
        if image is None:
            return config
        if image.size is not None:
            if not self.any_size and (image.size, image.size) != self.image_size:
                raise ConfigError(
                    f"image.size {image.size}: this {type(self.model).__name__} takes "
                    f"{self.image_size[0]}x{self.image_size[1]} images only; drop image.size "
                    "(a timm ViT is built for another size with backbone.kwargs.img_size)."
                )
            config["input_size"] = (3, image.size, image.size)
        if image.fit is not None:
            mode, crop_pct = _FITS[image.fit]
            config["crop_mode"] = mode
            config["crop_pct"] = crop_pct or config.get("crop_pct")
        return config

    def enable_checkpointing(self) -> None:
        """Recompute the blocks' activations in the backward pass."""
        raise NotImplementedError


class TimmViT(ViTAdapter):
    """timm's VisionTransformer family (``vit_*``, ``deit_*``)."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, timm.models.vision_transformer.VisionTransformer):
            raise ConfigError(
                f"{type(model).__name__} is not a timm VisionTransformer: VPT serves the vit_* "
                "and deit_* families."
            )
        self.model, self.blocks, self.final_norm = model, model.blocks, model.norm
        self.n_prefix = model.num_prefix_tokens

    @property
    def dim(self) -> int:
        return self.model.embed_dim

    @property
    def patch_area(self) -> int:
        return math.prod(self.model.patch_embed.patch_size)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.patch_embed.img_size)

    def classifier(self) -> nn.Module:
        head = self.model.get_classifier()  # DeiT-distilled: (head, distillation head)
        return nn.ModuleList(head) if isinstance(head, tuple) else head

    def reset_head(self, n_classes: int, pool: str) -> None:
        if pool not in ("token", "avg"):
            raise ConfigError(
                f"head.pool {pool}: a timm ViT pools token or avg ({pool} serves the "
                "transformers families)."
            )
        self.model.reset_classifier(n_classes, global_pool=pool)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)

    def own_data_config(self) -> dict[str, Any]:
        config = timm.data.resolve_data_config({}, model=self.model)
        return {**config, "input_size": (3, *self.image_size)}

    def enable_checkpointing(self) -> None:
        self.model.set_grad_checkpointing(True)


_TRANSFORMERS_FAMILIES: dict[str, type[TransformersViT]] = {}


def transformers_family(*model_types: str) -> Callable[[type[TransformersViT]], type]:
    """Register an adapter for transformers models whose config has one of these
    ``model_type``s."""

    def register(adapter: type[TransformersViT]) -> type[TransformersViT]:
        for model_type in model_types:
            _TRANSFORMERS_FAMILIES[model_type] = adapter
        return adapter

    return register


def load_transformers_vit(name: str) -> nn.Module:
    """A transformers vision transformer (folder or hub id) of a registered family."""
    return transformers_adapter(name).load(name)


def transformers_adapter(name: str) -> type[TransformersViT]:
    """The adapter of the registered family of the transformers model ``name``, read from
    its config alone."""
    try:
        model_type = AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"backbone {name}: no transformers model config can be read ({err}): give a model "
            "folder with a config.json, or a timm model name."
        ) from None
    family = _TRANSFORMERS_FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(
            f"backbone {name} is a transformers {model_type!r} model; VPT serves the model "
            f"types {', '.join(sorted(_TRANSFORMERS_FAMILIES))}."
        )
    return family


def pooled(hidden: torch.Tensor, n_prefix: int, pool: str) -> torch.Tensor:
    """The class token (token), the mean of the patch tokens (avg), or both side by side
    (token+avg, DINOv2's linear evaluation)."""
    if pool == "token":
        return hidden[:, 0]
    patches = hidden[:, n_prefix:].mean(1)
    return patches if pool == "avg" else torch.cat([hidden[:, 0], patches], dim=-1)


class TransformersViT(ViTAdapter):
    """A transformers image classifier: ``encoder`` (its base model) gives the hidden states,
    a new linear ``classifier`` reads them pooled."""

    model_classes: ClassVar[tuple[type[nn.Module], ...]]  # the first one loads

    def __init__(self, model: nn.Module) -> None:
        self.model, self.encoder = model, model.base_model
        self.pool = "token"

    @classmethod
    def serves(cls, model: nn.Module) -> bool:
        """Whether ``model`` is of this family."""
        return isinstance(model, cls.model_classes)

    @classmethod
    def load(cls, name: str) -> nn.Module:
        """The model of a folder or hub id."""
        return cls.model_classes[0].from_pretrained(name)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def patch_area(self) -> int:
        return self.model.config.patch_size**2

    def classifier(self) -> nn.Module:
        return self.model.classifier

    def reset_head(self, n_classes: int, pool: str) -> None:
        width = 2 * self.dim if pool == "token+avg" else self.dim
        self.model.classifier = nn.Linear(width, n_classes)
        self.pool = pool

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(pixel_values, **self.forward_kwargs(pixel_values)).last_hidden_state
        return self.model.classifier(pooled(hidden, self.n_prefix, self.pool))

    def forward_kwargs(self, pixel_values: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of the base model's forward on these images."""
        return {}

    def enable_checkpointing(self) -> None:
        self.model.activation_checkpointing_enable()


@transformers_family("vit")
class HFViT(TransformersViT):
    """transformers' ViTForImageClassification; for other input sizes it interpolates its
    position embeddings."""

    model_classes = (ViTForImageClassification,)
    any_size = True

    def __init__(self, model: ViTForImageClassification) -> None:
        super().__init__(model)
        self.blocks, self.final_norm = model.vit.layers, model.vit.layernorm
        self.n_prefix = 1

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def forward_kwargs(self, pixel_values: torch.Tensor) -> dict[str, Any]:
        return {"interpolate_pos_encoding": tuple(pixel_values.shape[-2:]) != self.image_size}

    def own_data_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, *self.image_size),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        }


@transformers_family("dinov2", "dinov2_with_registers")
class Dinov2ViT(TransformersViT):
    """transformers' DINOv2 (a ``Dinov2Model`` or ``Dinov2ForImageClassification`` folder,
    with or without register tokens). Its embeddings resize the position grid to any input
    size themselves; layer scale stays as trained. Input: 224 px (resize 256, centre crop),
    bicubic, ImageNet mean and std, as DINOv2's own evaluation."""

    model_classes = (Dinov2ForImageClassification, Dinov2WithRegistersForImageClassification)
    any_size = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.blocks, self.final_norm = self.encoder.encoder.layer, self.encoder.layernorm
        self.n_prefix = 1 + getattr(model.config, "num_register_tokens", 0)

    @classmethod
    def load(cls, name: str) -> nn.Module:
        # No labels: no head is loaded or initialised (promptkit adds its own).
        return AutoModelForImageClassification.from_pretrained(name, num_labels=0)

    @property
    def image_size(self) -> tuple[int, int]:
        return (224, 224)

    def own_data_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, *self.image_size),
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "interpolation": "bicubic",
            "crop_pct": 224 / 256,
        }


def adapter_for(model: nn.Module) -> ViTAdapter:
    """The adapter of a loaded vision backbone; an unsupported one is a clear error."""
    for family in dict.fromkeys(_TRANSFORMERS_FAMILIES.values()):
        if family.serves(model):
            return family(model)
    return TimmViT(model)


class VisualPromptPlacement:
    """Inserts, replaces and removes prompt tokens through hooks on the blocks and final norm.

    Several prompted models may share one backbone: each forward makes its placement the
    backbone's active one, and only the active placement's hooks act (it stays active after the
    forward, so that activation checkpointing recomputes the blocks with its prompts).

    Args:
        adapter: the backbone family.
    """

    def __init__(self, adapter: ViTAdapter) -> None:
        self.n_prefix = adapter.n_prefix
        self.backbone = adapter.model
        self.blocks = adapter.blocks
        after = (adapter.final_norm, adapter.classifier())  # run after the blocks
        self._after = {id(p) for module in after for p in module.parameters()}
        self._prompts: dict[int, torch.Tensor] = {}
        self.frozen_below = 0  # leading blocks this forward runs without autograd
        self._spare = WithoutAutograd(adapter.blocks, lambda _: self._active_depth())
        self._handles = [
            block.register_forward_pre_hook(self._before_block(index), with_kwargs=True)
            for index, block in enumerate(adapter.blocks)
        ]
        self._handles.append(adapter.final_norm.register_forward_pre_hook(self._before_norm))
        self.released = False

    def set_prompts(self, prompts: dict[int, torch.Tensor]) -> None:
        """From the next forward on, block ``i`` gets ``prompts[i]`` (``[N, D]``) if given,
        and this placement is the backbone's active one."""
        if self.released:
            raise PromptkitError("this VPT placement was released; build the model again.")
        self._prompts = prompts
        self.frozen_below = self._frozen_depth(prompts)
        self.backbone.__dict__[_ACTIVE] = self

    def _frozen_depth(self, prompts: dict[int, torch.Tensor]) -> int:
        """How many leading blocks need no autograd in this forward: those below the first
        trainable parameter and, when the prompts train, below the first prompted block."""
        if not torch.is_grad_enabled():
            return 0
        before = [p for p in self.backbone.parameters() if id(p) not in self._after]
        first = first_trained_layer(self.blocks, before)
        if any(p.requires_grad for p in prompts.values()):
            first = min(first, min(prompts))
        return first

    def _active_depth(self) -> int:
        return self.frozen_below if self.backbone.__dict__.get(_ACTIVE) is self else 0

    def release(self) -> None:
        """Remove the hooks; using the placement afterwards is an error."""
        for handle in self._handles:
            handle.remove()
        self._spare.remove()
        if self.backbone.__dict__.get(_ACTIVE) is self:
            del self.backbone.__dict__[_ACTIVE]
        self.released = True

    def _active(self) -> bool:
        return self.backbone.__dict__.get(_ACTIVE) is self and bool(self._prompts)

    def _before_block(self, index: int):
        def hook(_module, args, kwargs):
            if not self._active() or index not in self._prompts:
                return None
            hidden, *rest = args
            prompts = self._prompts[index].to(hidden.dtype).expand(hidden.shape[0], -1, -1)
            first = index == min(self._prompts)  # it inserts; later prompted blocks replace
            after = hidden[:, self.n_prefix + (0 if first else prompts.shape[1]) :]
            hidden = torch.cat([hidden[:, : self.n_prefix], prompts, after], dim=1)
            return (hidden, *rest), kwargs

        return hook

    def _before_norm(self, _module, args):
        if not self._active():
            return None
        hidden, *rest = args
        n = next(iter(self._prompts.values())).shape[0]
        return (torch.cat([hidden[:, : self.n_prefix], hidden[:, self.n_prefix + n :]], 1), *rest)


_ACTIVE = "_promptkit_active_placement"  # on the backbone: the placement whose prompts apply
