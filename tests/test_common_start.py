"""On a causal decoder the positions every row starts with run once: the same logits and
gradients as running every row whole, whatever the padding side."""

from __future__ import annotations

import pytest
import torch
from conftest import REVIEWS, prompt_model, review_batch, seeded_step, small_config
from torch import nn
from transformers import AutoModelForCausalLM, Lfm2Config, LlamaConfig, MistralConfig, OPTConfig

from promptkit.backbone.common_start import common_start
from promptkit.text.placements.input import InputConfig, InputPlacement

CLASSIFIER = {"type": "classifier", "classes": ["negative", "positive"], "pool": "mean"}
HEADS = {
    "classifier": {"head": CLASSIFIER},
    "verbalizer": {
        "head": {"verbalizer": {"negative": ["bad"], "positive": ["good"]}},
        "template": "[P*3] Review: <x> It was [MASK]",
    },
    "generation": {"head": {"type": "generation"}, "trainable": ["prompts"]},
}


def build(model_dir, family: str, **keys) -> nn.Module:
    recipe = {"template": "[P*3] Review: <x>", "head": CLASSIFIER, **keys}
    return prompt_model(model_dir(family), **recipe)


def first_layer_inputs(model: nn.Module, batch: dict) -> list[tuple[int, int]]:
    """The [rows, positions] of every call of the backbone's first layer in one forward."""
    shapes: list[tuple[int, int]] = []
    layer = model.placement.backbone_layers[0]
    handle = layer.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape[:2]))
    try:
        model(batch)
    finally:
        handle.remove()
    return shapes


@pytest.mark.parametrize(
    ("family", "head"),
    [
        ("llama", "classifier"),
        ("llama", "verbalizer"),
        ("llama", "generation"),
        ("gpt2", "classifier"),
    ],
)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_the_common_start_runs_once_and_changes_nothing(model_dir, family, head, padding):
    model = build(model_dir, family, padding_side=padding, **HEADS[head])
    if family == "gpt2":
        model.eval()  # GPT-2 drops out in training, where a shared start would share its noise
    batch = review_batch(model)
    rows, length = batch["input_ids"].shape
    shared = model.placement.common_start.length(batch)
    assert shared >= 4  # the three soft slots and "Review"
    assert first_layer_inputs(model, batch) == [(1, shared), (rows, length - shared)]
    once = seeded_step(model, batch)
    model.placement.common_start.applies = False
    assert first_layer_inputs(model, batch) == [(rows, length)]
    whole = seeded_step(model, batch)
    torch.testing.assert_close(once[0], whole[0])
    assert once[1].keys() == whole[1].keys() and whole[1]
    for name, grad in whole[1].items():
        assert grad is not None and grad.abs().sum() > 0
        torch.testing.assert_close(once[1][name], grad, msg=name)


def test_hidden_states_of_every_layer_come_back_whole(model_dir):
    model = build(model_dir, "llama")
    kwargs = model.placement(review_batch(model), model.prompts())
    once = model.lm.base_model(**kwargs, output_hidden_states=True).hidden_states
    model.placement.common_start.applies = False
    kwargs = model.placement(review_batch(model), model.prompts())
    whole = model.lm.base_model(**kwargs, output_hidden_states=True).hidden_states
    assert len(once) == len(whole)
    mask = kwargs["attention_mask"].bool()
    for a, b in zip(once, whole, strict=True):
        torch.testing.assert_close(a[mask], b[mask])


def test_it_stays_off_where_it_would_change_something(model_dir):
    gpt2 = build(model_dir, "gpt2")
    batch = review_batch(gpt2)
    assert gpt2.placement.common_start.length(batch) == 0  # dropout, training
    with torch.no_grad():
        assert gpt2.placement.common_start.length(batch) == 0  # still drops out
    assert gpt2.eval().placement.common_start.length(batch) > 0
    llama = build(model_dir, "llama")
    llama.enable_checkpointing()
    assert llama.placement.common_start.length(review_batch(llama)) == 0
    bert = build(model_dir, "bert")
    assert not bert.placement.common_start.applies
    assert bert.placement.common_start.length(review_batch(bert)) == 0


def test_written_answers_are_the_same(model_dir):
    recipe = {"head": {"type": "generation", "max_new_tokens": 4}, "trainable": ["prompts"]}
    model = build(model_dir, "llama", **recipe).eval()
    examples = model.examples(REVIEWS)
    once = model.generate(examples)
    model.placement.common_start.applies = False
    assert model.generate(examples) == once


def test_a_released_placement_leaves_the_backbone_alone(model_dir):
    model = build(model_dir, "llama")
    base = model.lm.base_model
    before = len(base._forward_pre_hooks), len(base._forward_hooks)
    model.placement.release()
    assert (len(base._forward_pre_hooks), len(base._forward_hooks)) == (
        before[0] - 1,
        before[1] - 1,
    )


def rows(*ids: list[int], left: bool = False, slots: list[list[int]] | None = None) -> dict:
    length = max(map(len, ids))
    padded = [[0] * (length - len(r)) + r if left else r + [0] * (length - len(r)) for r in ids]
    mask = [
        [int(i >= length - len(r)) if left else int(i < len(r)) for i in range(length)] for r in ids
    ]
    batch = {"input_ids": torch.tensor(padded), "attention_mask": torch.tensor(mask)}
    if slots is not None:
        batch["slot_ids"] = torch.tensor(slots)
    return batch


@pytest.mark.parametrize("left", [False, True])
def test_the_common_start_is_counted_over_real_tokens(left):
    assert common_start(rows([5, 6, 7, 8], [5, 6, 9], left=left)) == 2
    assert common_start(rows([5, 6, 7], [5, 6, 7], left=left)) == 2  # one position stays
    assert common_start(rows([5, 6, 7], [4, 6, 7], left=left)) == 0
    assert common_start(rows([5, 6, 7, 8], left=left)) == 0  # a single row


def test_slots_must_match_too():
    batch = rows([1, 1, 7, 8], [1, 1, 7, 9], slots=[[0, 1, -1, -1], [0, 2, -1, -1]])
    assert common_start(batch) == 1


SMALL = small_config(num_key_value_heads=2, pad_token_id=0)


def placement_on(settings) -> InputPlacement:
    return InputPlacement(InputConfig(), AutoModelForCausalLM.from_config(settings).eval())


def test_models_it_would_change_are_left_alone():
    dynamic = {"rope_type": "dynamic", "factor": 8.0, "rope_theta": 10000.0}
    for settings in (
        LlamaConfig(**SMALL, rope_parameters=dynamic),  # frequencies follow the length
        Lfm2Config(**{**SMALL, "layer_types": ["conv", "full_attention"]}),  # a recurrent layer
    ):
        assert not placement_on(settings).common_start.applies, type(settings).__name__
    layer_drop = OPTConfig(**SMALL, ffn_dim=64, dropout=0.0, attention_dropout=0.0, layerdrop=0.5)
    assert placement_on(layer_drop).common_start.dropout  # a dropped layer is dropout too


def test_windowed_attention_is_not_reordered():
    """Moving the left padding behind the common start would move a sliding window."""
    placement = placement_on(MistralConfig(**SMALL, sliding_window=4))
    assert placement.common_start.applies
    assert placement.common_start.length(rows([5, 6, 7, 8], [5, 6, 9], left=True)) == 0
    assert placement.common_start.length(rows([5, 6, 7, 8], [5, 6, 9])) == 2
