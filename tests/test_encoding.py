"""Encoding: token ids, soft-slot ids, mask positions, word ids, truncation of inputs only."""

import pytest
from conftest import make_tokenizer

from promptkit.errors import TemplateError
from promptkit.text.encoding import PromptTokenizer, fit_lengths
from promptkit.text.template import Template


@pytest.fixture(scope="module")
def masked_tok():
    return make_tokenizer(masked=True)


@pytest.fixture(scope="module")
def causal_tok():
    return make_tokenizer(masked=False)


def test_fit_lengths_cuts_the_longest_first():
    assert fit_lengths([3, 10, 4], 17) == [3, 10, 4]
    assert fit_lengths([3, 10, 4], 12) == [3, 5, 4]
    assert fit_lengths([3, 10, 4], 9) == [3, 3, 3]
    assert fit_lengths([8, 8], 9) == [5, 4]
    assert sum(fit_lengths([5, 7, 11, 2], 13)) == 13


def test_masked_lm_layout(masked_tok):
    enc = PromptTokenizer(Template("<x> it was [P1][P2] [MASK]."), masked_tok)
    (e,) = enc([{"x": "the movie"}])
    tokens = masked_tok.convert_ids_to_tokens(e.input_ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[1:5] == ["the", "movie", "it", "was"]
    assert e.slot_ids == [-1, -1, -1, -1, -1, 0, 1, -1, -1, -1]
    assert tokens[e.mask_position] == "[MASK]" and e.mask_position == 7
    assert tokens[8] == "."
    assert e.word_ids == [-1, 0, 1, -1, -1, -1, -1, -1, -1, -1]


def test_causal_lm_reads_next_token_and_drops_what_follows(causal_tok):
    enc = PromptTokenizer(Template("<x> it was [P1] [MASK]. more text"), causal_tok, causal=True)
    (e,) = enc([{"x": "the movie"}])
    tokens = causal_tok.convert_ids_to_tokens(e.input_ids)
    assert tokens[:5] == ["<s>", "the", "movie", "it", "was"]
    assert len(e.input_ids) == 6 and e.slot_ids[-1] == 0
    assert e.mask_position == 5  # the last token predicts the answer


def test_truncation_cuts_inputs_only_longest_first(masked_tok):
    enc = PromptTokenizer(Template("<a> and <b> it was [MASK]."), masked_tok, max_length=12)
    long_a = " ".join(["good"] * 20)
    (e,) = enc([{"a": long_a, "b": "the movie"}])
    tokens = masked_tok.convert_ids_to_tokens(e.input_ids)
    assert len(e.input_ids) == 12
    assert tokens[-5:] == ["it", "was", "[MASK]", ".", "[SEP]"]
    assert tokens.count("good") == 3 and "movie" in tokens  # the long input gave way
    (e2,) = enc([{"a": long_a, "b": " ".join(["bad"] * 20)}])
    counts = [e2.input_ids.count(masked_tok.convert_tokens_to_ids(w)) for w in ("good", "bad")]
    assert sorted(counts) == [2, 3]  # a budget of 5 shared between two equally long inputs


def test_template_longer_than_max_length_is_an_error(masked_tok):
    enc = PromptTokenizer(Template("[P*20] <x> [MASK]"), masked_tok, max_length=10)
    with pytest.raises(TemplateError, match="no room in max_length=10"):
        enc([{"x": "a"}])


def test_mask_needs_a_mask_token(causal_tok):
    with pytest.raises(TemplateError, match="no mask token"):
        PromptTokenizer(Template("<x> [MASK]"), causal_tok, causal=False)


def test_causal_mask_needs_a_token_before_it(causal_tok):
    causal_tok_no_bos = make_tokenizer(masked=False)
    causal_tok_no_bos._tokenizer.post_processor = None
    enc = PromptTokenizer(Template("[MASK] <x>"), causal_tok_no_bos, causal=True)
    with pytest.raises(TemplateError, match="put <x> before \\[MASK\\]"):
        enc([{"x": "a"}])


def test_word_ids_count_across_inputs(masked_tok):
    enc = PromptTokenizer(Template("<a> , <b>"), masked_tok)
    (e,) = enc([{"a": "the movie", "b": "was great"}])
    assert [w for w in e.word_ids if w >= 0] == [0, 1, 2, 3]


def byte_level_tokenizer():
    """A small GPT-2-style byte-level BPE, where spaces belong to the following word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["so the movie was great . It was really good , a fine film"] * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_spaces_belong_to_the_next_word():
    tok = byte_level_tokenizer()
    enc = PromptTokenizer(Template("[P1] <x> It was [P2] [MASK]."), tok, causal=True)
    (e,) = enc([{"x": "a fine film"}])
    pieces = [
        tok.convert_ids_to_tokens(i) if s < 0 else f"<P{s}>"
        for i, s in zip(e.input_ids, e.slot_ids, strict=True)
    ]
    assert "Ġ" not in pieces  # no token made of a lone space
    assert pieces[0] == "<P0>" and pieces[1].startswith("Ġa")  # the input after [P1] keeps it
    assert pieces[-1] == "<P1>" and e.mask_position == len(pieces) - 1
    plain = tok("a fine film It was", add_special_tokens=False)["input_ids"]
    assert tok.decode([i for i, s in zip(e.input_ids, e.slot_ids, strict=True) if s < 0]) == (
        " " + tok.decode(plain)
    )
