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

from promptkit.backbone import load_backbone
from promptkit.model import build_model
from promptkit.recipe import ModelConfig

P = 4
TEXTS = ["the movie was great", "i hated this boring film and the acting"]
TASKS = {"bert-encoder": "FEATURE_EXTRACTION", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}


def prompt_model(model_dir, family, placement):
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(model_dir(family))},
            "template": f"[P*{P}] <x>",
            "head": {"type": "classifier", "classes": ["a", "b"]},
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
    kwargs = ours.injector(batch, ours.prompts())
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
    kwargs = ours.injector(batch, ours.prompts())
    got = outputs(ours.lm, **kwargs)[:, P:]
    expected = outputs(peft, input_ids=ids, attention_mask=mask)[:, P:]
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-4)
    plain = outputs(peft.get_base_model(), input_ids=ids, attention_mask=mask)
    assert (got[mask.bool()] - plain[mask.bool()]).abs().max() > 1e-3  # the prompt matters
