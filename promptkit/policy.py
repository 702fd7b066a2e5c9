"""What trains: a declared policy over named groups of parameters; the rest is frozen.

- ``prompts``: the soft prompts (and their encoder);
- ``head``: the head's own parameters (a classifier; a verbalizer has none);
- ``bias``: BitFit, every bias of the backbone (LayerNorm shifts included);
- ``all``: every backbone parameter (full fine-tuning).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from promptkit.errors import ConfigError


def parameter_groups(
    prompts: nn.Module, head: nn.Module, backbone: nn.Module, policy: Iterable[str]
) -> dict[str, list[nn.Parameter]]:
    """Freeze everything, then unfreeze the groups the policy names; return them by group.

    A parameter belongs to one group only (``all`` takes the backbone's biases too).
    """
    policy = set(policy)
    groups: dict[str, list[nn.Parameter]] = {
        "prompts": list(prompts.parameters()),
        "head": list(head.parameters()),
        "bias": []
        if "all" in policy
        else [p for n, p in backbone.named_parameters() if n.endswith("bias")],
        "all": list(backbone.parameters()),
    }
    chosen = {g: [p for p in groups[g] if p.numel()] for g in groups if g in policy}
    for group, params in chosen.items():
        if not params:
            raise ConfigError(_EMPTY[group])
    for module in (prompts, head, backbone):
        module.requires_grad_(False)
    for params in chosen.values():
        for p in params:
            p.requires_grad_(True)
    return chosen


_EMPTY = {
    "prompts": "trainable includes 'prompts' but the template has no soft slot ([P1], [P*n]): "
    "add one, or drop 'prompts'.",
    "head": "trainable includes 'head' but this head has no parameters (a verbalizer reads the "
    "LM head): drop 'head', or use `head: {type: classifier}`.",
    "bias": "trainable includes 'bias' (BitFit) but the backbone has no bias parameters: "
    "choose another group.",
    "all": "trainable includes 'all' but the backbone has no parameters.",
}
