"""Layers below the first one that needs a gradient run without autograd: the same logits and
the same gradient of every trained parameter as with autograd everywhere."""

from __future__ import annotations

import pytest
import torch
from conftest import prompt_model, review_batch, seeded_step
from torch import nn

from promptkit.backbone.layers import WithoutAutograd, layers_in_order

CLASSIFIER = {"type": "classifier", "classes": ["negative", "positive"], "pool": "mean"}
# name: family, recipe keys, how many of the backbone's layers run without autograd (the tiny
# models have 2 layers; T5 runs its 2 encoder layers, then its 2 decoder layers)
CASES = {
    "bert prefix last:1": ("bert", {"prompts": {"placement": "prefix", "layers": "last:1"}}, 1),
    "gpt2 prefix 1-1": ("gpt2", {"prompts": {"placement": "prefix", "layers": "1-1"}}, 1),
    "llama prefix last:1": ("llama", {"prompts": {"placement": "prefix", "layers": "last:1"}}, 1),
    "llama prefix all": ("llama", {"prompts": {"placement": "prefix"}}, 0),
    "llama deep last:1": ("llama", {"prompts": {"placement": "deep", "layers": "last:1"}}, 0),
    "gpt2 input": ("gpt2", {}, 0),
    "bert head only": ("bert", {"template": "<x>", "trainable": ["head"]}, 2),
    "llama head, frozen prompts": ("llama", {"trainable": ["head"]}, 2),
    "bert bitfit": ("bert", {"template": "<x>", "trainable": ["bias", "head"]}, 0),
    "llama norm": ("llama", {"template": "<x>", "trainable": ["norm", "head"]}, 0),
    "t5 decoder prefixes": (
        "t5",
        {"prompts": {"placement": "prefix", "attention": ["decoder"]}, "head": "generation"},
        2,
    ),
    "t5 cross prefix last:1": (
        "t5",
        {
            "prompts": {"placement": "prefix", "attention": ["cross"], "layers": "last:1"},
            "head": "generation",
        },
        3,
    ),
    "t5 encoder prefix last:1": (
        "t5",
        {"prompts": {"placement": "prefix", "layers": "last:1", "attention": ["encoder"]}},
        1,
    ),
}


def build(model_dir, family: str, keys: dict) -> nn.Module:
    head = {"type": "generation"} if keys.get("head") == "generation" else CLASSIFIER
    recipe = {
        "template": "[P*3] <x>",
        "head": head,
        "trainable": ["prompts", "head"] if head is CLASSIFIER else ["prompts"],
        **{k: v for k, v in keys.items() if k != "head"},
    }
    return prompt_model(model_dir(family), **recipe)


def _first_leaf(layer: nn.Module) -> nn.Module:
    """The first module with weights inside a layer (it runs as the layer does)."""
    return next(
        m
        for m in layer.modules()
        if not any(m.children()) and next(m.parameters(), None) is not None
    )


def grad_modes(model: nn.Module, batch: dict) -> list[bool]:
    """Whether each layer of the backbone that ran ran with autograd on, in one forward (a
    layer run twice, for a common start and the rest, in the same mode both times)."""
    modes: dict[int, list[bool]] = {}
    handles = [
        _first_leaf(layer).register_forward_pre_hook(
            lambda *_, index=index: modes.setdefault(index, []).append(torch.is_grad_enabled())
        )
        for index, layer in enumerate(model.placement.backbone_layers)
    ]
    try:
        model(batch)
    finally:
        for handle in handles:
            handle.remove()
    assert all(len(set(seen)) == 1 for seen in modes.values())
    return [seen[0] for _, seen in sorted(modes.items())]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("case", list(CASES))
def test_frozen_layers_run_without_autograd_and_change_nothing(model_dir, case, checkpointing):
    family, keys, frozen = CASES[case]
    model = build(model_dir, family, keys)
    if checkpointing:
        model.enable_checkpointing()
    batch = review_batch(model)
    spared_modes = grad_modes(model, batch)
    spared = seeded_step(model, batch)
    model.placement.skips_autograd = False
    ran = len(grad_modes(model, batch))  # a classifier on T5 runs the encoder only
    assert grad_modes(model, batch) == [True] * ran
    assert spared_modes == [False] * frozen + [True] * (ran - frozen)
    logits, grads = seeded_step(model, batch)
    torch.testing.assert_close(spared[0], logits)
    assert spared[1].keys() == grads.keys() and grads
    assert all(grads[n].abs().sum() > 0 for n in grads if n.startswith(("head.", "prompts.")))
    for name, grad in grads.items():
        torch.testing.assert_close(spared[1][name], grad, msg=name)


def test_without_gradients_nothing_changes(model_dir):
    model = build(model_dir, "llama", CASES["llama prefix last:1"][1])
    batch = review_batch(model)
    with torch.no_grad():
        assert model.placement.frozen_depth(prompts_train=True) == 0
        assert grad_modes(model, batch) == [False, False]
    assert torch.is_grad_enabled()


def test_prompts_frozen_by_the_policy_still_get_a_gradient_when_asked(model_dir):
    """AutoPrompt asks for the gradient of a table the policy froze: the layers it reaches
    then run with autograd."""
    model = build(model_dir, "llama", CASES["llama head, frozen prompts"][1]).eval()
    batch = review_batch(model)
    model.prompts.table.requires_grad_(True)
    assert grad_modes(model, batch) == [True, True]
    model(batch).sum().backward()
    assert model.prompts.table.grad.abs().sum() > 0


def test_the_grad_mode_comes_back_when_a_frozen_layer_fails(model_dir):
    model = build(model_dir, "bert", CASES["bert head only"][1])
    batch = review_batch(model)
    first = model.placement.backbone_layers[0]

    def fail(*_):
        raise RuntimeError("boom")

    handle = next(m for m in first.modules() if isinstance(m, nn.Linear)).register_forward_hook(
        fail
    )
    with pytest.raises(RuntimeError, match="boom"):
        model(batch)
    handle.remove()
    assert torch.is_grad_enabled()
    assert grad_modes(model, batch) == [False, False]


def test_a_released_placement_leaves_the_layers_alone(model_dir):
    model = build(model_dir, "bert", CASES["bert head only"][1])
    layers = model.placement.backbone_layers
    model.placement.release()
    assert not any(layer._forward_pre_hooks or layer._forward_hooks for layer in layers)


@pytest.mark.parametrize(("family", "counts"), [("llama", 2), ("t5", 4), ("bart", 4)])
def test_layers_in_the_order_a_forward_runs_them(model_dir, family, counts):
    model = build(model_dir, family, {"head": "generation"}).lm
    layers = layers_in_order(model)
    assert len(layers) == counts
    if model.config.is_encoder_decoder:
        encoder = set(model.get_encoder().modules())
        assert [layer in encoder for layer in layers] == [True, True, False, False]


def test_any_stack_of_layers_can_run_without_autograd():
    """What a vision placement would do with its blocks: a stack of plain modules, and a rule
    that says, per forward, how many leading blocks need no autograd."""
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    blocks[0].requires_grad_(False)
    below = {"depth": 0}
    spare = WithoutAutograd(blocks, lambda _kwargs: below["depth"])
    inputs = torch.randn(2, 4)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        hidden = inputs
        for block in blocks:
            hidden = block(hidden)
        hidden.sum().backward()
        grad = blocks[1].weight.grad.clone()
        blocks.zero_grad()
        return hidden.detach(), grad

    full = run()
    below["depth"] = 1
    spared = run()
    torch.testing.assert_close(full, spared)
    spare.remove()
