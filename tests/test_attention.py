"""promptkit's attention function: the stock attention, but grouped-query attention under a
mask on CPU runs on the shared key/value heads."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from promptkit.backbone.attention import use_promptkit_attention


def logits_and_grad(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_()
    logits = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    (logits * batch["attention_mask"].unsqueeze(-1)).square().mean().backward()
    return logits.detach(), embeds.grad


def test_grouped_query_attention_under_a_mask_shares_the_key_value_heads(monkeypatch):
    from conftest import make_model

    stock = make_model("llama").eval()  # 4 query heads share 2 key/value heads
    assert stock.config.num_key_value_heads < stock.config.num_attention_heads
    ours = copy.deepcopy(stock)
    assert use_promptkit_attention(ours)
    batch = {
        "input_ids": torch.tensor([[0, 0, 7, 8, 9], [6, 7, 8, 9, 10]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]),
    }
    grouped: list[bool] = []
    attention = F.scaled_dot_product_attention

    def recording(query, key, *args, **kwargs):
        grouped.append(bool(kwargs.get("enable_gqa")) and key.shape[1] < query.shape[1])
        return attention(query, key, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    expected = logits_and_grad(stock, batch)
    assert grouped == [False, False]  # transformers repeats the heads under a mask
    grouped.clear()
    found = logits_and_grad(ours, batch)
    assert grouped == [True, True]
    torch.testing.assert_close(found[0], expected[0])
    torch.testing.assert_close(found[1], expected[1])


def test_a_position_bias_goes_to_the_stock_attention():
    from promptkit.backbone.attention import _grouped_on_cpu

    module = torch.nn.Module()
    module.num_key_value_groups = 2
    query, mask = torch.zeros(1, 4, 3, 8), torch.ones(1, 1, 3, 3, dtype=torch.bool)
    assert _grouped_on_cpu(module, query, mask, {})
    assert not _grouped_on_cpu(module, query, mask, {"position_bias": torch.zeros(1, 4, 3, 3)})


def test_the_input_placement_switches_attention_only_for_shared_key_value_heads(model_dir):
    from conftest import make_model

    from promptkit.text.placements.input import InputConfig, InputPlacement

    gpt2 = make_model("gpt2")  # one key/value head per query head: nothing to gain
    before = gpt2.config._attn_implementation
    InputPlacement(InputConfig(), gpt2)
    assert gpt2.config._attn_implementation == before
    llama = make_model("llama")
    InputPlacement(InputConfig(), llama)
    assert llama.config._attn_implementation == "promptkit_sdpa"
