"""A backbone sharded across processes: FSDP2 through accelerate.

``accelerate launch`` with an FSDP config (``--use_fsdp --fsdp_version 2``, or a config file
saying ``distributed_type: FSDP``) gives each process a share of every weight: the frozen
backbone's and the trained parameters' alike, as DTensors that the forward gathers one
layer at a time. What promptkit saves stays whole: trained parameters, the best state and
the optimizer's are gathered (every process takes part; only the main one writes), and
loading scatters them back.

accelerate shards on accelerators only; on a CPU machine it falls back to plain data
parallelism without a word. ``set_up`` turns the sharding on there too (over gloo), so that
what runs on a GPU runs, and is tested, on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from promptkit.errors import ConfigError


def set_up(accelerator: Accelerator) -> None:
    """Shard as the launch asks, on the CPU too, and refuse what cannot be sharded, before
    any model is."""
    state = accelerator.state
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and state.distributed_type == DistributedType.MULTI_CPU:
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
        # where accelerate keeps it: every later AcceleratorState() copies it from PartialState
        state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    if state.distributed_type == DistributedType.FSDP:
        _check(state.fsdp_plugin)
    if (
        state.distributed_type == DistributedType.DEEPSPEED
        and state.deepspeed_plugin.zero_stage == 3
    ):
        raise ConfigError(
            "DeepSpeed ZeRO-3 partitions the weights in a way promptkit does not gather (the "
            "saved prompt would be empty): shard the backbone with FSDP2 instead, which gives "
            "each process the same share (accelerate launch --config_file "
            "examples/accelerate/fsdp.yaml ...)."
        )


def _check(plugin: FullyShardedDataParallelPlugin) -> None:
    if plugin.fsdp_version != 2:
        raise ConfigError(
            "promptkit shards the backbone with FSDP2 (FSDP1 replaces the modules that "
            "promptkit's prompts reach): set fsdp_version: 2 in the accelerate config, or "
            "launch with --fsdp_version 2."
        )
    if plugin.activation_checkpointing:
        raise ConfigError(
            "fsdp_activation_checkpointing wraps the backbone's layers, which promptkit's "
            "prompts reach: set it to false and trainer.gradient_checkpointing: true instead "
            "(the same recomputation, done by the backbone)."
        )


def is_sharded(module: nn.Module) -> bool:
    """Whether a module's parameters are shared out across processes."""
    return isinstance(module, FSDPModule)


@contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """Inside, a sharded module's own parameters are whole (those of FSDP's root group: the
    prompts and the head, not the backbone's layers); every process must enter."""
    if not is_sharded(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor in full: a shard is gathered from every process (all of them must call)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def share(module: nn.Module) -> str:
    """What this process holds of a sharded module, in words (for the run's log)."""
    params = list(module.parameters())
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    total = sum(p.numel() for p in params)
    return (
        f"the model is sharded across {PartialState().num_processes} processes: the main one "
        f"holds {held} of its {total} parameters"
    )


def load_whole(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load whole tensors into some of a module's parameters, sharded or not (every process
    must call)."""
    if is_sharded(module):
        module.reshard()  # the shards hold the values, not what a forward gathered
    own = dict(module.named_parameters())
    module.load_state_dict({n: _shared_like(v, own[n]) for n, v in state.items()}, strict=False)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict, its sharded tensors whole (every process must call)."""
    saved = optimizer.state_dict()
    per_param = {i: {k: whole(v) for k, v in s.items()} for i, s in saved["state"].items()}
    return {**saved, "state": per_param}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping[str, Any]) -> None:
    """Load what ``optimizer_state`` returned, sharded as the parameters are."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param = {
        i: {k: _shared_like(v, params[i]) for k, v in s.items()} for i, s in saved["state"].items()
    }
    optimizer.load_state_dict({**saved, "state": per_param})


def _shared_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` shared out as ``param`` is (a tensor of another shape, as Adam's step
    count, stays whole)."""
    if isinstance(param, DTensor) and value.shape == param.shape:
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value
