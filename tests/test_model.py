"""PromptModel: injection, heads, the trainable policy, prompt encoders."""

import hashlib
import math

import pytest
import torch

import promptkit.backbone.loading
from promptkit.backbone.loading import fingerprint, load_backbone
from promptkit.core.soft_prompts import SoftPrompts
from promptkit.errors import ConfigError, TemplateError, VerbalizerError
from promptkit.text.config import ModelConfig
from promptkit.text.data import collate
from promptkit.text.label_words import Verbalizer, score_classes
from promptkit.text.model import build_model

SENTIMENT = {"positive": ["great", "good"], "negative": ["terrible", "bad"]}
LM_FAMILIES = ["bert", "roberta", "gpt2", "llama"]


def recipe(folder, template="<x> it was [P1] [MASK].", **extra) -> ModelConfig:
    data = {
        "backbone": {"name": str(folder)},
        "template": template,
        "head": {"verbalizer": SENTIMENT},
        **extra,
    }
    return ModelConfig.model_validate(data)


def batch_of(model, texts, side=None):
    encoded = model.encode([{"x": t} for t in texts])
    return collate(encoded, model.backbone.tokenizer.pad_token_id, side or model.padding_side)


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_soft_vector_equal_to_a_token_embedding_gives_the_tokens_logits(model_dir, family):
    soft = build_model(recipe(model_dir(family), "<x> it was [P1] [MASK]."))
    hard_recipe = recipe(model_dir(family), "<x> it was really [MASK].", trainable=[])
    hard = build_model(hard_recipe, backbone=soft.backbone)
    really = soft.backbone.tokenizer.convert_tokens_to_ids("really")
    with torch.no_grad():
        soft.prompts.table[0] = soft.lm.get_input_embeddings().weight[really]
    soft.eval(), hard.eval()
    texts = ["the movie was fun", "boring"]
    torch.testing.assert_close(soft(batch_of(soft, texts)), hard(batch_of(hard, texts)))


@pytest.mark.parametrize("family", LM_FAMILIES)
def test_left_and_right_padding_agree(model_dir, family):
    model = build_model(recipe(model_dir(family), "[P*3] <x> it was [P1] [MASK]."))
    model.eval()
    texts = ["the movie was fun and the acting was good", "boring"]
    left, right = (model(batch_of(model, texts, side)) for side in ("left", "right"))
    torch.testing.assert_close(left, right)
    alone = model(batch_of(model, texts[1:]))
    torch.testing.assert_close(left[1:], alone)


@pytest.mark.parametrize(
    "policy", [["prompts"], ["bias"], ["prompts", "bias"], ["norm"], ["bias", "norm"], ["all"]]
)
def test_only_the_declared_groups_get_gradients(model_dir, policy):
    model = build_model(recipe(model_dir("bert"), trainable=policy))
    loss = model(batch_of(model, ["the movie was fun"])).logsumexp(-1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        expected = (
            ("prompts" in policy and name.startswith("prompts."))
            or ("bias" in policy and name.startswith("lm.") and name.endswith("bias"))
            or ("norm" in policy and name.startswith("lm.") and "LayerNorm" in name)
            or ("all" in policy and name.startswith("lm."))
        )
        assert p.requires_grad == expected, name
        if not expected:
            assert p.grad is None, name
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_classifier_head_trains_head_and_prompts_only(model_dir):
    cfg = recipe(
        model_dir("bert-encoder"),
        head={"type": "classifier", "pool": "mean"},
        trainable=["prompts", "head"],
    )
    model = build_model(cfg, classes=["negative", "positive"])
    logits = model(batch_of(model, ["the movie was fun", "bad"]))
    assert logits.shape == (2, 2)
    logits.sum().backward()
    assert model.head.linear.weight.grad is not None
    assert all(p.grad is None for p in model.lm.parameters())


@pytest.mark.parametrize("pool", ["cls", "mean", "mask", "last"])
def test_classifier_pools_ignore_padding(model_dir, pool):
    cfg = recipe(
        model_dir("bert-encoder"), head={"type": "classifier", "pool": pool}, trainable=["head"]
    )
    model = build_model(cfg, classes=["a", "b"]).eval()
    texts = ["the movie was fun and the acting was good", "boring"]
    for side in ("left", "right"):
        torch.testing.assert_close(
            model(batch_of(model, texts, side))[1:], model(batch_of(model, texts[1:], side))
        )


def test_policy_errors_are_clear(model_dir):
    # a verbalizer has no parameters: `head` (which presets name) trains nothing there
    assert build_model(recipe(model_dir("bert"), trainable=["head"])).groups == {}
    with pytest.raises(ConfigError, match="no soft slot"):
        build_model(recipe(model_dir("bert"), "<x> it was [MASK].", trainable=["prompts"]))
    with pytest.raises(ConfigError, match="no bias parameters"):
        build_model(recipe(model_dir("llama"), trainable=["bias"]))


def test_verbalizer_needs_mask_and_lm_head(model_dir):
    with pytest.raises(TemplateError, match="no \\[MASK\\]"):
        build_model(recipe(model_dir("bert"), "<x> it was [P1]."))
    with pytest.raises(ConfigError, match="without an LM head"):
        build_model(recipe(model_dir("bert-encoder")))


def test_untokenisable_label_word_is_an_error(model_dir):
    bad = recipe(
        model_dir("bert"), head={"verbalizer": {"positive": ["splendiferous"], "negative": ["bad"]}}
    )
    with pytest.raises(VerbalizerError, match="'splendiferous' of class 'positive'"):
        build_model(bad)
    with pytest.raises(VerbalizerError, match="no label words"):
        Verbalizer({"positive": [], "negative": ["bad"]})
    with pytest.raises(VerbalizerError, match="empty label word"):
        Verbalizer({"positive": ["  "], "negative": ["bad"]})


def test_verbalizer_aggregation():
    log_probs = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    # class 0: words [0] and [1]; class 1: word [2] and the two-piece word [2, 3]
    ids = torch.tensor([[[0, 0], [1, 0]], [[2, 0], [2, 3]]])
    mask = torch.tensor([[[True, False], [True, False]], [[True, False], [True, True]]])
    mean = score_classes(log_probs, ids, mask, "mean", "mean")
    two_piece = (math.log(0.3) + math.log(0.4)) / 2
    expected = [math.log((0.1 + 0.2) / 2), math.log((0.3 + math.exp(two_piece)) / 2)]
    torch.testing.assert_close(mean, torch.tensor([expected]))
    best = score_classes(log_probs, ids, mask, "first", "max")
    torch.testing.assert_close(best, torch.log(torch.tensor([[0.2, 0.3]])))


def test_uneven_word_counts_are_padded_out():
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    ids = torch.tensor([[[0], [0]], [[1], [2]]])
    mask = torch.tensor([[[True], [False]], [[True], [True]]])
    scores = score_classes(log_probs, ids, mask)
    torch.testing.assert_close(scores, torch.log(torch.tensor([[0.5, 0.25]])))


def test_label_words_follow_the_space_before_mask(model_dir):
    model = build_model(recipe(model_dir("gpt2"), "<x> it was [MASK]", trainable=[]))
    great = model.backbone.tokenizer(" great", add_special_tokens=False)["input_ids"]
    assert model.head.word_ids[0, 0, 0].item() == great[0]


@pytest.mark.parametrize("encoder", ["mlp", "lstm"])
def test_encoders_start_at_the_initialisation_and_collapse(encoder):
    prompts = SoftPrompts(3, 8, encoder=encoder)
    with torch.no_grad():
        prompts.table.normal_()
    torch.testing.assert_close(prompts(), prompts.table)
    with torch.no_grad():
        for p in prompts.encoder.parameters():
            p.add_(0.1)
    assert not torch.allclose(prompts(), prompts.table)
    torch.testing.assert_close(prompts.collapse(), prompts().detach())
    prompts().sum().backward()
    assert all(p.grad is not None for p in prompts.parameters())


def test_init_from_words_uses_their_embeddings(model_dir):
    backbone = load_backbone(str(model_dir("bert")))
    model = build_model(
        recipe(model_dir("bert"), "[P1:great] [P*2:really good] <x> [MASK]"), backbone=backbone
    )
    emb = backbone.model.get_input_embeddings().weight
    ids = backbone.tokenizer.convert_tokens_to_ids(["great", "really", "good"])
    torch.testing.assert_close(model.prompts.table.data, emb[ids].detach())


def test_init_is_seeded(model_dir):
    a = build_model(recipe(model_dir("bert"), "[P*4] <x> [MASK]"))
    b = build_model(recipe(model_dir("bert"), "[P*4] <x> [MASK]"), backbone=a.backbone)
    c = build_model(recipe(model_dir("bert"), "[P*4] <x> [MASK]", seed=7), backbone=a.backbone)
    torch.testing.assert_close(a.prompts.table, b.prompts.table)
    assert not torch.allclose(a.prompts.table, c.prompts.table)


def test_encoder_and_head_weights_are_seeded(model_dir):
    cfg = recipe(
        model_dir("bert-encoder"),
        "[P*3] <x> [MASK]",
        prompts={"encoder": "lstm"},
        head={"type": "classifier"},
        trainable=["prompts", "head"],
    )
    first = build_model(cfg, classes=["a", "b"])
    torch.rand(100)  # whatever the global RNG did in between
    second = build_model(cfg, classes=["a", "b"], backbone=first.backbone)
    for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    state = torch.get_rng_state()
    build_model(cfg, classes=["a", "b"], backbone=first.backbone)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone


def test_fingerprint_of_the_first_scheme_hashes_float32_values_in_chunks(monkeypatch):
    """Chunked hashing gives the digest of the whole tensor's float32 bytes, so fingerprints
    saved with runs of the first scheme still match."""
    weights = torch.randn(37, 5).to(torch.bfloat16)
    whole = hashlib.sha256(b"tag")
    whole.update(weights.float().numpy().tobytes())
    monkeypatch.setattr(promptkit.backbone.loading, "_FINGERPRINT_CHUNK", 16)
    assert fingerprint("tag", [("", weights)], scheme=1) == whole.hexdigest()[:16]
    assert fingerprint("tag", [("", weights + 1)], scheme=1) != whole.hexdigest()[:16]


def test_fingerprint_sees_every_weight_and_agrees_across_float32_and_bfloat16(model_dir):
    backbone = load_backbone(str(model_dir("gpt2")))
    digest = backbone.fingerprint()
    assert load_backbone(str(model_dir("gpt2")), dtype="bfloat16").fingerprint() == digest
    with torch.no_grad():
        backbone.model.transformer.h[1].mlp.c_fc.weight[3, 7] += 0.1  # deep inside, one value
    assert backbone.fingerprint() != digest
