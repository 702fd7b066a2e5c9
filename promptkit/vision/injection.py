"""Visual prompts in vision transformers (VPT). The backbone-specific code lives here.

A ``ViTAdapter`` knows one family (timm's VisionTransformer, transformers'
ViTForImageClassification): its blocks, final norm, prefix tokens, head and input size.
``VisualPromptInjector`` works through forward pre-hooks, so the backbone keeps its own
forward (and activation checkpointing): prompt tokens are inserted after the class/register
tokens before the first prompted block (after position embeddings and patch dropout), replace
the previous prompts before each later prompted block (VPT-deep), and are removed before the
final norm, so pooling and the head never see them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn
from transformers import ViTForImageClassification

from promptkit.errors import ConfigError, PromptkitError


class ViTAdapter:
    """What promptkit needs to know of one vision-transformer family."""

    model: nn.Module
    blocks: Sequence[nn.Module]
    final_norm: nn.Module
    n_prefix: int  # class (and register / distillation) tokens before the patches

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

    def data_config(self) -> dict[str, Any]:
        """timm-style data config: input_size, mean, std, interpolation, crop_pct."""
        raise NotImplementedError

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
        self.model.reset_classifier(n_classes, global_pool=pool)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)

    def data_config(self) -> dict[str, Any]:
        config = timm.data.resolve_data_config({}, model=self.model)
        return {**config, "input_size": (3, *self.image_size)}

    def enable_checkpointing(self) -> None:
        self.model.set_grad_checkpointing(True)


class HFViT(ViTAdapter):
    """transformers' ViTForImageClassification (pooling: the class token or the patch mean)."""

    def __init__(self, model: ViTForImageClassification) -> None:
        self.model, self.blocks, self.final_norm = model, model.vit.layers, model.vit.layernorm
        self.n_prefix = 1
        self.pool = "token"

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def patch_area(self) -> int:
        return self.model.config.patch_size**2

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def classifier(self) -> nn.Module:
        return self.model.classifier

    def reset_head(self, n_classes: int, pool: str) -> None:
        self.model.classifier = nn.Linear(self.dim, n_classes)
        self.pool = pool

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vit(pixel_values).last_hidden_state
        pooled = hidden[:, 0] if self.pool == "token" else hidden[:, self.n_prefix :].mean(1)
        return self.model.classifier(pooled)

    def data_config(self) -> dict[str, Any]:
        return {
            "input_size": (3, *self.image_size),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        }

    def enable_checkpointing(self) -> None:
        self.model.activation_checkpointing_enable()


def adapter_for(model: nn.Module) -> ViTAdapter:
    """The adapter of a loaded vision backbone; an unsupported one is a clear error."""
    if isinstance(model, ViTForImageClassification):
        return HFViT(model)
    return TimmViT(model)


class VisualPromptInjector:
    """Inserts, replaces and removes prompt tokens through hooks on the blocks and final norm.

    Several prompted models may share one backbone: each forward makes its injector the
    backbone's active one, and only the active injector's hooks act (it stays active after the
    forward, so that activation checkpointing recomputes the blocks with its prompts).

    Args:
        adapter: the backbone family.
    """

    def __init__(self, adapter: ViTAdapter) -> None:
        self.n_prefix = adapter.n_prefix
        self.backbone = adapter.model
        self._prompts: dict[int, torch.Tensor] = {}
        self._handles = [
            block.register_forward_pre_hook(self._before_block(index), with_kwargs=True)
            for index, block in enumerate(adapter.blocks)
        ]
        self._handles.append(adapter.final_norm.register_forward_pre_hook(self._before_norm))
        self.released = False

    def set_prompts(self, prompts: dict[int, torch.Tensor]) -> None:
        """From the next forward on, block ``i`` gets ``prompts[i]`` (``[N, D]``) if given,
        and this injector is the backbone's active one."""
        if self.released:
            raise PromptkitError("this VPT injector was released; build the model again.")
        self._prompts = prompts
        self.backbone.__dict__[_ACTIVE] = self

    def release(self) -> None:
        """Remove the hooks; using the injector afterwards is an error."""
        for handle in self._handles:
            handle.remove()
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


_ACTIVE = "_promptkit_active_injector"  # on the backbone: the injector whose prompts apply
