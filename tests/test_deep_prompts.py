"""Deep prompts: key/value prefixes (prefix tuning, P-tuning v2) and deep infix prompts."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel, DynamicCache

from promptkit.backbone.loading import load_backbone
from promptkit.core.config import validate
from promptkit.errors import ConfigError, PromptkitError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run
from promptkit.text.config import ModelConfig
from promptkit.text.model import build_model
from promptkit.text.placements.prefix import PrefixConfig, PrefixPlacement
from tests.conftest import run_config

FAMILIES = ["bert", "roberta", "gpt2", "llama"]
TEXTS = ["the movie was great", "i hated this boring film and the acting"]


def recipe(
    folder, placement="prefix", template="[P*4] <x>", trainable=("prompts",), **prompts
) -> ModelConfig:
    return validate(
        ModelConfig,
        {
            "backbone": {"name": str(folder)},
            "template": template,
            "head": {"type": "classifier", "classes": ["negative", "positive"], "pool": "mean"},
            "prompts": {"placement": placement, **prompts},
            "trainable": list(trainable),
        },
        "recipe",
    )


def model_for(model_dir, family, attention="sdpa", **kwargs):
    backbone = load_backbone(str(model_dir(family)))
    backbone.model.set_attn_implementation(attention)
    model = build_model(recipe(model_dir(family), **kwargs), backbone=backbone).eval()
    return model


def hidden(model, texts=TEXTS, padding_side=None):
    """Last hidden states of the real tokens, one tensor per text."""
    if padding_side:
        model.padding_side = padding_side
    batch = model.collate(model.encode(model.examples(texts)))
    inputs = model.placement(batch, model.prompts())
    states = model.lm.base_model(**inputs).last_hidden_state
    return [s[m.bool()] for s, m in zip(states, batch["attention_mask"], strict=True)]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_masked_out_prefix_reproduces_the_plain_model(model_dir, family, attention):
    model = model_for(model_dir, family, attention)
    plain = model_for(
        model_dir, family, attention, placement="input", template="<x>", trainable=["head"]
    )
    prompted = hidden(model)
    batch = model.collate(model.encode(model.examples(TEXTS)))
    batch["prefix_visible"] = torch.zeros(len(TEXTS), 4, dtype=torch.bool)
    masked = model.lm.base_model(**model.placement(batch, model.prompts())).last_hidden_state
    for got, want, mask, changed in zip(
        masked, hidden(plain), batch["attention_mask"], prompted, strict=True
    ):
        torch.testing.assert_close(got[mask.bool()], want, atol=1e-5, rtol=1e-5)
        assert (changed - want).abs().max() > 1e-3  # a visible prefix changes the output


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_equals_a_cache_prefix_without_position_shift(model_dir, family, attention):
    """The reference: the same keys and values as a DynamicCache, with the real tokens' position
    ids given explicitly (unshifted) and the 2D mask extended by hand."""
    model = model_for(model_dir, family, attention)
    ours = hidden(model)
    reference = copy.deepcopy(model.lm)
    reference.set_attn_implementation(attention)
    batch = model.collate(model.encode(model.examples(TEXTS)))
    kwargs = model.placement.embedded(batch)  # the input alone, no prefix
    heads, size = model.placement.shapes[0]
    table = model.prompts().view(4, 2, 2, heads, size)
    cache = DynamicCache(config=reference.config)
    for layer in range(2):
        key, value = table[:, layer].permute(1, 2, 0, 3)
        cache.update(key.expand(2, -1, -1, -1), value.expand(2, -1, -1, -1), layer)
    kwargs["attention_mask"] = torch.cat(
        [torch.ones(2, 4, dtype=torch.long), batch["attention_mask"]], 1
    )
    states = reference.base_model(**kwargs, past_key_values=cache, use_cache=True).last_hidden_state
    for got, want, mask in zip(ours, states, batch["attention_mask"], strict=True):
        torch.testing.assert_close(got, want[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("placement", ["prefix", "deep"])
@pytest.mark.parametrize("family", FAMILIES)
def test_padding_side_does_not_change_the_output(model_dir, family, placement):
    model = model_for(model_dir, family, placement=placement)
    left_padded, right_padded = (
        hidden(model, padding_side="left"),
        hidden(model, padding_side="right"),
    )
    for left, right in zip(left_padded, right_padded, strict=True):
        torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("placement", ["prefix", "deep"])
@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_prompts_train_and_checkpointing_gives_the_same_gradients(
    model_dir, family, placement
):
    grads = []
    for checkpointing in (False, True):
        model = model_for(model_dir, family, placement=placement).train()
        if checkpointing:
            model.lm.activation_checkpointing_enable()
        batch = model.collate(model.encode(model.examples(TEXTS)))
        torch.manual_seed(0)  # the same dropout masks in both runs
        model(batch).sum().backward()
        trained = {n for n, p in model.named_parameters() if p.grad is not None}
        assert trained == {"prompts.table"}
        grads.append(model.prompts.table.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_prefix_goes_only_into_the_selected_layers(model_dir):
    model = model_for(model_dir, "bert", layers="last:1")
    plain = model_for(model_dir, "bert", placement="input", template="<x>", trainable=["head"])
    assert model.placement.width == 1 * 2 * 32  # one layer: key and value of 4 heads x 8
    batch = model.collate(model.encode(model.examples(TEXTS)))

    def states(m):
        kwargs = m.placement(batch, m.prompts())
        return m.lm.base_model(**kwargs, output_hidden_states=True).hidden_states

    prompted, reference = states(model), states(plain)
    torch.testing.assert_close(prompted[1], reference[1])  # layer 0 has no prefix
    assert (prompted[2] - reference[2]).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_deep_prompts_replace_the_slot_states_before_each_layer(model_dir, family):
    """Deep vectors equal to the states an input-level prompt reaches at each layer give the
    input-level prompt's output; other vectors change it."""
    shallow = model_for(model_dir, family, placement="input")
    deep = model_for(model_dir, family, placement="deep")
    assert deep.prompts.table.shape == (4, 2 * 32)
    batch = shallow.collate(shallow.encode(shallow.examples(TEXTS[:1])))
    kwargs = shallow.placement(batch, shallow.prompts())
    states = shallow.lm.base_model(**kwargs, output_hidden_states=True).hidden_states
    slots = batch["slot_ids"][0] >= 0
    with torch.no_grad():
        deep.prompts.table.copy_(torch.cat([shallow.prompts.table, states[1][0][slots]], -1))
    torch.testing.assert_close(hidden(deep, TEXTS[:1]), hidden(shallow, TEXTS[:1]))
    with torch.no_grad():
        deep.prompts.table[:, 32:] += torch.randn(4, 32)  # not a constant: LayerNorm drops it
    assert (hidden(deep, TEXTS[:1])[0] - hidden(shallow, TEXTS[:1])[0]).abs().max() > 1e-3


def test_deep_layer_selection_always_prompts_the_input(model_dir):
    """Deep slots are input positions: layer 0's vectors come in through the embeddings, so
    `first:1` is input-level prompting and `last:1` adds the last layer's own vectors."""
    shallow = model_for(model_dir, "bert", placement="input")
    first = model_for(model_dir, "bert", placement="deep", layers="first:1")
    last = model_for(model_dir, "bert", placement="deep", layers="last:1")
    assert first.placement.layers == [0] and last.placement.layers == [0, 1]
    assert first.prompts.table.shape == (4, 32) and last.prompts.table.shape == (4, 64)
    with torch.no_grad():
        first.prompts.table.copy_(shallow.prompts.table)
    for got, want in zip(hidden(first), hidden(shallow), strict=True):
        torch.testing.assert_close(got, want)


def test_an_architecture_without_numbered_attention_is_refused():
    config = DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, hidden_dim=37)
    with pytest.raises(ConfigError, match="cannot take key/value prefixes.*placement: input"):
        PrefixPlacement(PrefixConfig(), DistilBertModel(config))


def test_prefix_checks_come_before_loading(model_dir):
    with pytest.raises(ConfigError, match="lstm runs over input positions"):
        recipe(model_dir("bert"), encoder="lstm")
    with pytest.raises(ConfigError, match=r"\[P1\] starts from words.*encoder: mlp"):
        build_model(recipe(model_dir("bert"), template="[P1:great] <x>"))
    with pytest.raises(ConfigError, match="layers 'last:9'"):
        build_model(recipe(model_dir("bert"), layers="last:9"))


def test_prefix_dropout_only_while_training(model_dir):
    model = model_for(model_dir, "bert", dropout=0.5)
    batch = model.collate(model.encode(model.examples(TEXTS)))
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    model.head.dropout.p = 0.0
    assert (model(batch) - model(batch)).abs().max() > 0


def test_prefix_tuning_mlp_is_collapsed_on_save_and_kept_for_resume(model_dir, sentiment_data):
    config = run_config(
        model_dir("bert"),
        sentiment_data,
        template="[P*3] <x>",
        head={"type": "classifier", "pool": "mean"},
        prompts={"placement": "prefix", "encoder": "mlp", "encoder_hidden": 16},
        trainable=["prompts", "head"],
    )
    result = fit(validate_config(config))
    model = result.predictor.model
    assert model.prompts.table.shape == (3, 32)  # embedding-sized rows, widened by the MLP
    from safetensors.torch import load_file

    saved = load_file(str(result.run_dir / "prompt.safetensors"))
    assert saved["prompts.table"].shape == (3, 2 * 2 * 32)
    assert not any(k.startswith("prompts.encoder") for k in saved)
    resume = torch.load(result.run_dir / "resume/state.pt", weights_only=False)
    assert any(k.startswith("prompts.encoder") for k in resume["trainable"])
    loaded = load_run(result.run_dir)
    texts = ["the movie was great", "the film was awful and boring"]
    torch.testing.assert_close(loaded.logits(texts), result.predictor.logits(texts))


@pytest.mark.parametrize("family", FAMILIES)
def test_models_sharing_a_backbone_each_use_their_own_prompts(model_dir, family):
    """Several prompted models on one backbone, called in turn, each give what it gives
    alone; a released placement refuses to run."""
    alone = {
        placement: hidden(model_for(model_dir, family, placement=placement))
        for placement in ("input", "prefix", "deep")
    }
    plain_alone = hidden(
        model_for(model_dir, family, placement="input", template="<x>", trainable=["head"])
    )
    backbone = load_backbone(str(model_dir(family)))
    shared = {
        placement: build_model(recipe(model_dir(family), placement), backbone=backbone).eval()
        for placement in ("input", "prefix", "deep")
    }
    plain = build_model(recipe(model_dir(family), "input", "<x>", ["head"]), backbone=backbone)
    for _ in range(2):
        for placement, model in shared.items():
            for got, want in zip(hidden(model), alone[placement], strict=True):
                torch.testing.assert_close(got, want)
        for got, want in zip(hidden(plain.eval()), plain_alone, strict=True):
            torch.testing.assert_close(got, want)
    shared["deep"].placement.release()
    with pytest.raises(PromptkitError, match="released"):
        hidden(shared["deep"])
    for got, want in zip(hidden(plain), plain_alone, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_full_length_input_still_fits_with_a_prefix(model_dir, family):
    """The real tokens keep positions 0..L-1: at the model's longest input, a prefix that took
    positions would run past the position table."""
    model = model_for(model_dir, family)
    longest = model.lm.config.get_text_config().max_position_embeddings
    longest -= model.placement.position_offset  # RoBERTa counts from padding_idx + 1
    model.tokenizer.max_length = longest
    batch = model.collate(model.encode(model.examples([" ".join(["good"] * 200)])))
    assert batch["input_ids"].shape[1] == longest
    assert torch.isfinite(model(batch)).all()


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5", "bart"])
def test_prefixes_can_start_as_the_keys_and_values_of_words(model_dir, family):
    """``start: activations``: each prefixed attention starts with the keys and values the
    backbone itself computes for the slots' words (for a decoder-only model: its key/value
    cache of those words); a slot that names none starts from a sampled token."""
    end = " so [MASK]" if family in ("t5", "bart") else ""
    model = model_for(
        model_dir, family, template="[P1:great][P2:movie] <x>" + end, start="activations"
    )
    tokenizer = model.backbone.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(w) for w in ("great", "movie")]
    words = model.lm.get_input_embeddings().weight[ids].detach()
    assert torch.allclose(model.prompts(), model.placement.activations(model.lm, words))
    sampled = model_for(model_dir, family, template="[P*3] <x>" + end, start="activations")
    assert sampled.prompts().shape == (3, sampled.placement.width)
    if family in ("t5", "bart"):
        return  # three stacks of attention: the cache below is a decoder-only model's
    cache = DynamicCache(config=model.lm.config)
    with torch.no_grad():
        model.lm(inputs_embeds=words.unsqueeze(0), past_key_values=cache)
    prefixes = model.placement.prefixes(model.prompts(), {})
    for index, module in enumerate(model.placement.targets):
        assert torch.allclose(prefixes[module].key, cache.layers[index].keys[0], atol=1e-5)
        assert torch.allclose(prefixes[module].value, cache.layers[index].values[0], atol=1e-5)


def test_starting_prefixes_from_words_is_checked(model_dir):
    with pytest.raises(ConfigError, match="prompts.start: activations"):
        build_model(recipe(model_dir("gpt2"), template="[P1:great] <x>"))
    with pytest.raises(ConfigError, match="which an encoder produces"):
        build_model(recipe(model_dir("gpt2"), encoder="mlp", start="activations"))
