"""Backbones larger than the memory at hand: accelerate's big-model dispatch, through the
``device_map``, ``max_memory`` and ``offload_folder`` options transformers loads with.

A dispatched backbone keeps each layer where its device map puts it: on a GPU, in CPU memory,
or on disk. Offloaded weights wait on the meta device and accelerate's hooks bring each one in
for the forward that needs it, so the gradient still reaches the prompts through them. The
prompts and the head run where the backbone takes its inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import torch
from accelerate.utils import convert_file_size_to_int
from torch import nn

from promptkit.errors import ConfigError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def loading_options(
    device_map: str | dict[str, int | str] | None,
    max_memory: dict[int | str, int | str] | None,
    offload_folder: str | None,
) -> dict[str, object]:
    """The options transformers' ``from_pretrained`` dispatches a model with, checked."""
    if device_map is None:
        given = [
            k for k, v in (("max_memory", max_memory), ("offload_folder", offload_folder)) if v
        ]
        if given:
            raise ConfigError(
                f"backbone.{given[0]} applies under a device map only: set backbone.device_map "
                "(auto puts what fits in memory first and the rest on disk)."
            )
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ConfigError(
            f"backbone.device_map {device_map!r} is none of {', '.join(DEVICE_MAPS)}: give one "
            "of them, or a mapping of module names to a GPU index, cpu or disk."
        )
    for device, size in (max_memory or {}).items():
        try:
            convert_file_size_to_int(size)
        except ValueError:
            raise ConfigError(
                f"backbone.max_memory[{device!r}] = {size!r} is not a size: give bytes or a "
                'size such as "500MiB" or "20GB".'
            ) from None
    options = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
    return {key: value for key, value in options.items() if value is not None}


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate's hooks place the model's layers (a device map spread it)."""
    return hasattr(model, "_hf_hook")


def input_device(model: nn.Module) -> torch.device:
    """Where the model takes its inputs: the main device of a dispatched model, else the
    device its weights are on."""
    if is_dispatched(model):
        return torch.device(model._hf_hook.execution_device)
    return next(model.parameters()).device


def offloaded_parameters(model: nn.Module) -> set[int]:
    """The ids of the parameters that are only brought in for a forward (on the meta device
    between forwards): no `trainable` group may train them."""
    return {id(p) for p in model.parameters() if p.is_meta}


def stored(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """A parameter of ``module``, read from where accelerate keeps it if it is offloaded."""
    param = getattr(module, name)
    return module._hf_hook.weights_map[name] if param.is_meta else param


def weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter by name, as ``named_parameters`` gives it, an offloaded one read from
    where it is kept (one at a time: the whole model is never in memory)."""
    owners = dict(model.named_modules())
    for name, _ in model.named_parameters():
        module_name, _, short = name.rpartition(".")
        yield name, stored(owners[module_name], short)


def placement_summary(model: nn.Module) -> str:
    """Where a device map put the model's parts: "2 parts on cpu, 6 on disk"."""
    counts = Counter(str(device) for device in model.hf_device_map.values())
    parts = [f"{count} on {device}" for device, count in counts.items()]
    return f"device map: {len(model.hf_device_map)} parts, " + ", ".join(parts)
