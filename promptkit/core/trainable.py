"""What trains: the `trainable` groups of parameters a config declares; the rest is frozen.

- ``prompts``: the soft prompts (and their encoder);
- ``head``: the head's own parameters (a classifier's; a verbalizer and a generator have
  none, and there the group trains nothing);
- ``bias``: BitFit, every bias of the backbone (LayerNorm shifts included);
- ``norm``: every normalisation layer's scale and shift (LayerNorm / RMSNorm tuning; what
  BitFit can still train on a backbone without biases, such as Llama's);
- ``all``: every backbone parameter (full fine-tuning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from promptkit.backbone.dispatch import offloaded_parameters
from promptkit.backbone.quantization import quantized_layer_parameters
from promptkit.backbone.sharding import gathered, whole
from promptkit.errors import ConfigError

if TYPE_CHECKING:
    from promptkit.tasks import Task


def parameter_groups(
    prompts: nn.Module, head: nn.Module, backbone: nn.Module, trainable: Iterable[str]
) -> dict[str, list[nn.Parameter]]:
    """Freeze everything, then unfreeze the groups ``trainable`` names; return them by group.

    Groups are claimed in the order prompts, head, bias, norm, all: a parameter belongs to the
    first group that names it (a head inside the backbone is not in ``bias`` or ``all``).
    """
    trainable = set(trainable)
    candidates = {
        "prompts": prompts.parameters(),
        "head": head.parameters(),
        "bias": (p for n, p in backbone.named_parameters() if n.endswith("bias")),
        "norm": (
            p
            for m in backbone.modules()
            if "norm" in type(m).__name__.lower()
            for p in m.parameters(recurse=False)
        ),
        "all": backbone.parameters(),
    }
    claimed: set[int] = set()
    chosen: dict[str, list[nn.Parameter]] = {}
    quantized = quantized_layer_parameters(backbone)
    offloaded = offloaded_parameters(backbone)
    for group, params in candidates.items():
        if group not in trainable:
            continue
        chosen[group] = [p for p in params if p.numel() and id(p) not in claimed]
        claimed.update(id(p) for p in chosen[group])
        if not chosen[group] and group == "head":  # a verbalizer or generator has none
            del chosen[group]
        elif not chosen[group]:
            raise ConfigError(_EMPTY[group])
        elif any(id(p) in quantized for p in chosen[group]):
            raise ConfigError(_ON_QUANTIZED.format(group=group))
        elif any(id(p) in offloaded for p in chosen[group]):
            raise ConfigError(_OFFLOADED.format(group=group))
    for module in (prompts, head, backbone):
        module.requires_grad_(False)
    for params in chosen.values():
        for p in params:
            p.requires_grad_(True)
    return chosen


def first_trained_layer(
    layers: Sequence[nn.Module], backbone: nn.Module | Iterable[nn.Parameter]
) -> int:
    """The index of the first of ``layers`` (a backbone's, in the order a forward runs them)
    that holds a parameter that trains, ``len(layers)`` when none does; 0 when another of the
    backbone's parameters trains (a module, or the parameters that may run before the layers:
    the input embeddings)."""
    inside = {id(p) for layer in layers for p in layer.parameters()}
    params = backbone.parameters() if isinstance(backbone, nn.Module) else backbone
    if any(p.requires_grad and id(p) not in inside for p in params):
        return 0
    trained = (
        index
        for index, layer in enumerate(layers)
        if any(p.requires_grad for p in layer.parameters())
    )
    return next(trained, len(layers))


# Estimated after training and saved with the prompt, not parameters: the label bias
# (promptkit.text.calibration) and a multi-label model's logit thresholds.
ESTIMATES = ("calibration", "thresholds")


class TrainableModule(nn.Module):
    """Base of prompt models (text and vision): ``self.prompts`` plus parameter
    ``self.groups`` from the ``trainable`` groups.

    Subclasses define ``classes``, ``task``, ``fingerprint()`` (of the untouched backbone),
    ``examples(items)`` (user inputs -> examples), ``encode(examples)``,
    ``collate(encoded, labels)`` and ``forward(batch) -> logits``.
    """

    groups: dict[str, list[nn.Parameter]]
    classes: list[str]
    task: Task

    @property
    def device(self) -> torch.device:
        """Where the model takes its inputs."""
        return next(self.parameters()).device

    def fingerprint(self, scheme: int = 2) -> str:
        """A hash of what the trained parameters depend on in the backbone (``scheme``: of
        which promptkit version, see ``promptkit.backbone.loading.fingerprint``)."""
        raise NotImplementedError

    def data_columns(self) -> list[str]:
        """The fields of a data row the model reads (besides the label)."""
        raise NotImplementedError

    def enable_checkpointing(self) -> None:
        """Recompute the backbone's activations in the backward pass (less memory)."""
        raise NotImplementedError

    def answer_counts(self, examples: Sequence[Mapping[str, Any]]) -> list[int]:
        """How many answers each example has (one, unless the task labels words)."""
        return [1] * len(examples)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters only, prompt encoders collapsed to the plain table."""
        with gathered(self):  # sharded: every process must call
            state = {
                n: whole(p.detach()).clone()
                for n, p in self.named_parameters()
                if p.requires_grad and not n.startswith("prompts.")
            }
            if "prompts" in self.groups:
                state["prompts.table"] = self.prompts.collapse()
        for name in ESTIMATES:
            if getattr(self, name, None) is not None:
                state[name] = getattr(self, name).detach().cpu()
        state.update({n: b.detach().clone() for n, b in self._estimated().items()})
        return state

    def _estimated(self) -> dict[str, torch.Tensor]:
        """The head's saved buffers: what it estimated from data rather than trained (a
        knowledgeable verbalizer's word priors)."""
        head = getattr(self, "head", None)
        if head is None:
            return {}
        trained = {n for n, _ in head.named_parameters()}
        buffers = dict(head.named_buffers())
        return {f"head.{n}": buffers[n] for n in head.state_dict() if n not in trained}

    def load_trained_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what ``trained_state`` saved (onto a model built with a plain prompt table)."""
        state = dict(state)
        for name in ESTIMATES:
            if name in state:
                setattr(self, name, state.pop(name))
        own = dict(self.named_parameters()) | self._estimated()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise ConfigError(
                f"saved parameters do not fit this model ({unknown[:3]}): the run does not "
                "fit its own recipe."
            )
        with torch.no_grad():
            for name, value in state.items():
                if own[name].shape != value.shape:
                    raise ConfigError(
                        f"saved {name} has shape {tuple(value.shape)}, the model expects "
                        f"{tuple(own[name].shape)}: the run does not fit its own recipe."
                    )
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise ConfigError(
                        f"saved {name} holds non-finite values: the run folder is damaged."
                    )
                own[name].copy_(value)

    def n_trainable(self) -> int:
        """How many parameters train."""
        return sum(p.numel() for params in self.groups.values() for p in params)


_ON_QUANTIZED = (
    "trainable includes {group!r}, which would train the backbone's quantized layers (their "
    "weights, or the biases beside them), and quantized layers stay frozen: train prompts, a "
    "head or norm instead, or load the backbone unquantized (drop backbone.quantization)."
)
_EMPTY = {
    "prompts": "trainable includes 'prompts' but there are none (no soft slot [P1], [P*n] in "
    "the template, or vpt.tokens: 0): add some, or drop 'prompts'.",
    "bias": "trainable includes 'bias' (BitFit) but the backbone has no bias parameters: "
    "choose another group (norm trains the normalisation layers instead).",
    "norm": "trainable includes 'norm' but the backbone has no normalisation layers with "
    "parameters: choose another group.",
    "all": "trainable includes 'all' but the backbone has no parameters.",
}
_OFFLOADED = (
    "trainable includes {group!r}, which would train backbone weights that backbone.device_map "
    "offloads (they are read in for each forward and cannot train): train prompts or a head, "
    "or give backbone.max_memory room for the whole model."
)
