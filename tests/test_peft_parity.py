"""Parity with PEFT, the reference implementation: with identical prompt tensors, promptkit's
prefix tuning and prompt tuning give PEFT's outputs on the same tiny models.

What is aligned: PEFT always numbers the real tokens from P (the prefix takes positions);
promptkit keeps them at 0.. (a prefix has no position), so PEFT is given position ids shifted
back by P. PEFT's prompt tuning puts the virtual tokens before everything, special tokens too;
promptkit puts them where the template says, so the test places them first. Right padding:
PEFT's virtual tokens sit in front of left padding, so left padding shifts its positions.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

from promptkit.backbone.loading import load_backbone
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model

P = 4
TEXTS = ["the movie was great", "i hated this boring film and the acting"]
TASKS = {"bert-encoder": "FEATURE_EXTRACTION", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}


def prompt_model(model_dir, family, placement):
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(model_dir(family))},
            "template": f"[P*{P}] <x>",
            "head": {"type": "classifier", "classes": ["a", "b"], "pool": "mean"},
            "prompts": {"placement": placement, "init": "random"},
            "padding_side": "right",
        }
    )
    return build_model(recipe, backbone=load_backbone(str(model_dir(family)))).eval()


def outputs(model, **kwargs):
    out = model(**kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family", sorted(TASKS))
def test_prefix_tuning_matches_peft(model_dir, family):
    ours = prompt_model(model_dir, family, "prefix")
    reference = copy.deepcopy(ours.lm)
    reference.set_attn_implementation("sdpa")
    peft = get_peft_model(
        reference, PrefixTuningConfig(task_type=TASKS[family], num_virtual_tokens=P)
    ).eval()
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(ours.prompts.table)
    batch = ours.collate(ours.encode(ours.examples(TEXTS)))
    kwargs = ours.placement(batch, ours.prompts())
    expected = outputs(
        peft,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=kwargs["position_ids"] - P,  # PEFT adds P back
    )
    got = outputs(ours.lm, **kwargs)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-4)
    plain = outputs(
        peft.get_base_model(), input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    assert (got[mask] - plain[mask]).abs().max() > 1e-3  # the prefix matters


@pytest.mark.parametrize("family", sorted(TASKS))
def test_prompt_tuning_matches_peft(model_dir, family):
    ours = prompt_model(model_dir, family, "input")
    peft = get_peft_model(
        copy.deepcopy(ours.lm), PromptTuningConfig(task_type=TASKS[family], num_virtual_tokens=P)
    ).eval()
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(ours.prompts.table)
    tokens = ours.backbone.tokenizer(TEXTS, padding=True, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    soft = torch.arange(P).expand(len(TEXTS), -1)
    batch = {
        "input_ids": torch.cat([torch.zeros_like(soft), ids], 1),
        "slot_ids": torch.cat([soft, torch.full_like(ids, -1)], 1),
        "attention_mask": torch.cat([torch.ones_like(soft), mask], 1),
    }
    kwargs = ours.placement(batch, ours.prompts())
    got = outputs(ours.lm, **kwargs)[:, P:]
    expected = outputs(peft, input_ids=ids, attention_mask=mask)[:, P:]
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-4)
    plain = outputs(peft.get_base_model(), input_ids=ids, attention_mask=mask)
    assert (got[mask.bool()] - plain[mask.bool()]).abs().max() > 1e-3  # the prompt matters


# Generation: the same logits at every decoding step and the same greedy tokens.
#
# Aligned: PEFT numbers the real tokens from P while a prefix is in place (at every decoding
# step as in training); here it numbers them from 0 like promptkit, by leaving its position
# offset out. PEFT's T5 prefix goes into the decoder's self-attention only (one table for
# its layers), so promptkit's prefix is given `attention: [decoder]` and the same per-layer
# keys and values; and T5's relative position bias is set to zero on both sides, since PEFT
# biases the prefix keys as positions before the answer and promptkit gives them no position.
# PEFT's prompt tuning places the virtual tokens before the input's special tokens; promptkit
# is given the same order. One example a call: PEFT's prompt tuning misplaces left padding.
STEPS = 4
GENERATORS = {"gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM"}


def generating_model(model_dir, family, placement, attention=None):
    prompts = {"placement": placement, "init": "random"}
    if attention:
        prompts["attention"] = attention
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(model_dir(family))},
            "template": f"[P*{P}] <x>",
            "head": {"type": "generation", "max_new_tokens": STEPS},
            "prompts": prompts,
        }
    )
    model = build_model(recipe).eval()
    if family == "t5":
        for module in model.lm.modules():
            if getattr(module, "has_relative_attention_bias", False):
                torch.nn.init.zeros_(module.relative_attention_bias.weight)
    return model


def greedy(model, **inputs):
    out = model.generate(
        **inputs,
        max_new_tokens=STEPS,
        min_new_tokens=STEPS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    return out.sequences[:, -STEPS:], torch.stack(out.logits, 1)


def ours(model, ids):
    """promptkit's decoding of token ids, the virtual tokens first (PEFT's order)."""
    from promptkit.text.decoding import carried

    soft = torch.arange(P).unsqueeze(0) if model.placement.takes_positions else ids[:, :0]
    batch = {
        "input_ids": torch.cat([torch.zeros_like(soft), ids], 1),
        "slot_ids": torch.cat([soft, torch.full_like(ids, -1)], 1),
        "attention_mask": torch.ones(1, soft.shape[1] + ids.shape[1], dtype=torch.long),
    }
    kwargs = model.placement(batch, model.prompts())
    kwargs.pop("position_ids", None)
    with carried(model.lm, kwargs.pop("promptkit", None)), torch.no_grad():
        return greedy(model.lm, **kwargs)


def prefix_table(peft_model, stack="self"):
    """PEFT's per-layer prefix keys and values as promptkit's table (rows: prefix positions;
    each row every layer's key then value)."""
    cache = peft_model.get_prompt(batch_size=1)
    if stack == "decoder":
        cache = cache.self_attention_cache
    per_layer = [torch.cat([lay.keys[0], lay.values[0]], 0) for lay in cache.layers]  # [2H,P,D]
    return torch.cat([layer.permute(1, 0, 2).flatten(1) for layer in per_layer], 1)


@pytest.mark.parametrize(
    ("family", "placement"), [(f, p) for f in GENERATORS for p in ("input", "prefix")]
)
def test_generation_matches_peft_at_every_step(model_dir, family, placement, monkeypatch):
    attention = ["decoder"] if family == "t5" and placement == "prefix" else None
    model = generating_model(model_dir, family, placement, attention)
    kind = PrefixTuningConfig if placement == "prefix" else PromptTuningConfig
    peft = get_peft_model(
        copy.deepcopy(model.lm), kind(task_type=GENERATORS[family], num_virtual_tokens=P)
    ).eval()
    peft.get_base_model().set_attn_implementation("sdpa")
    if placement == "prefix":  # PEFT's real tokens from 0, as promptkit's
        monkeypatch.setattr(peft, "_adjust_prompt_learning_kwargs", lambda *a, **k: None)
    with torch.no_grad():
        if placement == "prefix":
            model.prompts.table.copy_(prefix_table(peft, "decoder" if attention else "self"))
        else:
            model.prompts.table.copy_(peft.prompt_encoder["default"].embedding.weight[:P])
    tokenizer = model.backbone.tokenizer
    for text in TEXTS:
        ids = tokenizer([text], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want_tokens, want_logits = greedy(
                peft, input_ids=ids, attention_mask=torch.ones_like(ids)
            )
        got_tokens, got_logits = ours(model, ids)
        torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
        assert got_tokens.tolist() == want_tokens.tolist()
