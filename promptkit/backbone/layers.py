"""The backbone's layers: which ones deep prompts select, where they are, and running the
leading ones without autograd when nothing below a depth needs a gradient."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from promptkit.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: config validation, which checks
    # layer specs, runs before torch is loaded
    from torch import nn
    from torch.utils.hooks import RemovableHandle
    from transformers import PreTrainedModel

_FORMS = "all, first:K, last:K or A-B (0-based, inclusive)"


def select_layers(spec: str, n_layers: int) -> list[int]:
    """The layer indices a spec names: ``all``, ``first:K``, ``last:K`` or ``A-B``."""
    spec = spec.strip()
    if spec == "all":
        return list(range(n_layers))
    if match := re.fullmatch(r"(first|last):(\d+)", spec):
        k = int(match[2])
        if not 1 <= k <= n_layers:
            raise ConfigError(f"layers {spec!r}: K must be 1..{n_layers} for this backbone")
        return list(range(k)) if match[1] == "first" else list(range(n_layers - k, n_layers))
    if match := re.fullmatch(r"(\d+)-(\d+)", spec):
        start, end = int(match[1]), int(match[2])
        if not 0 <= start <= end < n_layers:
            raise ConfigError(f"layers {spec!r}: need 0 <= A <= B < {n_layers} for this backbone")
        return list(range(start, end + 1))
    raise ConfigError(f"layers {spec!r}: write {_FORMS}")


def check_layers(spec: str) -> str:
    """A layer spec's form, checked before the backbone is known (its bounds are checked by
    ``select_layers``)."""
    spec = spec.strip()
    if spec != "all" and not re.fullmatch(r"(first|last):\d+|\d+-\d+", spec):
        raise ValueError(f"write {_FORMS}")
    return spec


def n_layers(model: PreTrainedModel) -> int:
    """How many transformer layers the backbone has (its encoder's, for an encoder-decoder)."""
    return model.config.get_text_config().num_hidden_layers


def layer_list(model: PreTrainedModel) -> nn.ModuleList:
    """The backbone's transformer layers."""
    found = _layers_under(model.base_model, n_layers(model))
    if found is None:
        raise ConfigError(
            f"cannot find the {n_layers(model)} layers of {type(model).__name__}: deep prompts "
            "need a backbone whose layers are one ModuleList (BERT, RoBERTa, GPT-2, Llama and "
            "most others). Use `prompts.placement: input`."
        )
    return found


def layers_in_order(model: PreTrainedModel) -> list[nn.Module]:
    """Every transformer layer of the backbone in the order a forward runs them (an
    encoder-decoder's encoder layers, then its decoder layers); empty when they cannot be
    found."""
    if model.config.is_encoder_decoder:
        stacks = [_layers_under(model.get_encoder()), _layers_under(model.get_decoder())]
    else:
        stacks = [_layers_under(model.base_model, n_layers(model))]
    if any(stack is None for stack in stacks):
        return []
    return [layer for stack in stacks for layer in stack]


def _layers_under(root: nn.Module, count: int | None = None) -> nn.ModuleList | None:
    """The first ModuleList under ``root`` (of ``count`` modules, when given)."""
    from torch import nn

    for module in root.modules():
        if isinstance(module, nn.ModuleList) and len(module) and count in (None, len(module)):
            return module
    return None


class WithoutAutograd:
    """Runs the leading layers of a stack without autograd in the forwards that ask for it.

    ``below(kwargs)`` reads, from the keyword arguments of a layer's call, how many leading
    ``layers`` of that forward need no autograd (0: all do). Each such layer runs as under
    ``torch.no_grad()``: it records no graph and keeps no activations, and the grad mode is
    restored when it returns or raises. The layers must be frozen and their inputs must need
    no gradient in those forwards: what ``below`` answers is the caller's promise.

    A vision placement uses it the same way, over its blocks, with its own ``below``.
    """

    def __init__(self, layers: Sequence[nn.Module], below: Callable[[dict], int]) -> None:
        self._handles: list[RemovableHandle] = []
        for index, layer in enumerate(layers):
            saved: list[bool | None] = []  # per call of the layer: the grad mode to restore
            self._handles += [
                layer.register_forward_pre_hook(
                    self._entering(index, below, saved), with_kwargs=True
                ),
                layer.register_forward_hook(self._leaving(saved), always_call=True),
            ]

    @staticmethod
    def _entering(index: int, below: Callable[[dict], int], saved: list) -> Callable:
        import torch

        def enter(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
            spared = index < below(kwargs) and torch.is_grad_enabled()
            saved.append(True if spared else None)
            if spared:
                torch.set_grad_enabled(False)

        return enter

    @staticmethod
    def _leaving(saved: list) -> Callable:
        import torch

        def leave(_module: nn.Module, _args: tuple, _output: object) -> None:
            if saved and saved.pop():
                torch.set_grad_enabled(True)

        return leave

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
