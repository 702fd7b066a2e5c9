"""An encoder's top layer runs only the positions the head reads: the same logits and
gradients as running it over every position."""

from __future__ import annotations

import pytest
import torch
from conftest import REVIEWS, prompt_model, review_batch, seeded_step
from torch import nn
from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForMaskedLM

from promptkit.backbone.top_layer import _top_attention

CLASSES = ["negative", "positive"]
HEADS = {
    "cls": {"type": "classifier", "classes": CLASSES, "pool": "cls"},
    "mask": {"type": "classifier", "classes": CLASSES, "pool": "mask"},
    "verbalizer": {"type": "verbalizer", "verbalizer": {"negative": "bad", "positive": "good"}},
    "soft verbalizer": {
        "type": "soft_verbalizer",
        "verbalizer": {"negative": "bad", "positive": "good"},
    },
}


def build(model_dir, family: str, head: dict, **keys) -> nn.Module:
    recipe = {"template": "[P*2] <x> It was [MASK].", "head": head, **keys}
    return prompt_model(model_dir(family), **recipe)


def top_layer_rows(model: nn.Module, batch: dict) -> list[int]:
    """How many positions the top layer's feed-forward ran, per call, in one forward."""
    top = model.placement.backbone_layers[-1]
    linear = [m for m in top.modules() if isinstance(m, nn.Linear)][-1]
    seen: list[int] = []
    handle = linear.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        model(batch)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("placement", ["input", "prefix"])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("family", ["bert-nodropout", "roberta"])
def test_the_top_layer_runs_the_read_positions_only(model_dir, family, head, placement):
    model = build(model_dir, family, HEADS[head], prompts={"placement": placement})
    if family == "roberta":
        model.eval()  # dropout: the narrowed layer draws fewer random numbers
    batch = review_batch(model)
    assert batch["attention_mask"].eq(0).any()  # padding: the mask is narrowed too
    assert model.placement.top_layer.applies
    assert top_layer_rows(model, batch) == [1]
    narrowed = seeded_step(model, batch)
    model.placement.top_layer.applies = False
    assert top_layer_rows(model, batch) == [batch["input_ids"].shape[1]]
    whole = seeded_step(model, batch)
    torch.testing.assert_close(narrowed[0], whole[0])
    assert narrowed[1].keys() == whole[1].keys() and whole[1]
    for name, grad in whole[1].items():
        torch.testing.assert_close(narrowed[1][name], grad, msg=name)


@pytest.mark.parametrize("head", ["mean", "tokens"])
def test_heads_that_read_every_position_run_them_all(model_dir, head):
    if head == "tokens":
        tagger = {"type": "token", "classes": ["O", "B-X"]}
        model = build(model_dir, "bert", tagger, template="[P*2] <x>")
        texts = [["the", "movie"], ["fun"]]
    else:
        model = build(model_dir, "bert", {"type": "classifier", "classes": CLASSES, "pool": head})
        texts = REVIEWS
    batch = model.collate(model.encode(model.examples(texts)))
    assert top_layer_rows(model, batch) == [batch["input_ids"].shape[1]]


def test_under_checkpointing_the_top_layer_runs_whole(model_dir):
    model = build(model_dir, "bert", HEADS["cls"])
    model.enable_checkpointing()
    batch = review_batch(model)
    assert top_layer_rows(model, batch) == [batch["input_ids"].shape[1]]


def test_only_layers_that_feed_their_input_to_the_attention_are_narrowed(model_dir):
    from conftest import make_model

    assert _top_attention(make_model("bert")) is not None
    for family in ("llama", "gpt2", "t5"):  # rotary or causal or k/v named otherwise
        assert _top_attention(make_model(family)) is None
    settings = RobertaPreLayerNormConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4
    )
    # a norm between the layer's input and its attention: keys would need the norm's output
    assert _top_attention(RobertaPreLayerNormForMaskedLM(settings)) is None


def test_the_probe_leaves_the_random_state_alone(model_dir):
    from conftest import make_model

    model = make_model("bert").train()
    state = torch.get_rng_state()
    _top_attention(model)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_position_read_twice_keeps_its_gradient():
    from conftest import make_model

    from promptkit.text.placements.input import InputConfig, InputPlacement

    backbone = make_model("bert-nodropout").double().eval().requires_grad_(False)
    placement = InputPlacement(InputConfig(), backbone)
    ids = torch.arange(5, 17).view(2, 6)
    slots = torch.full_like(ids, -1)
    slots[:, 1] = 0
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "slot_ids": slots}
    read = torch.tensor([[2, 2], [3, 3]])
    results = []
    for narrowed in (True, False):
        placement.top_layer.applies = narrowed
        vectors = torch.ones(
            1, backbone.config.hidden_size, dtype=torch.float64, requires_grad=True
        )
        hidden = backbone.base_model(**placement(batch, vectors, read)).last_hidden_state
        states = hidden.gather(1, read.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        states.square().sum().backward()
        results.append((states.detach(), vectors.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])  # float64: summed in another order
