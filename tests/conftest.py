"""Tiny backbones built from configs, saved as real model folders, and their tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    T5Config,
    T5ForConditionalGeneration,
)

WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "was",
    "is",
    "it",
    "great",
    "good",
    "terrible",
    "bad",
    "awful",
    "fine",
    "boring",
    "fun",
    "really",
    "very",
    "not",
    "so",
    "and",
    "but",
    "i",
    "loved",
    "hated",
    "this",
    "that",
    "acting",
    "story",
    ".",
    ",",
    "!",
    "?",
    "topic",
    ":",
    "yes",
    "no",
    "maybe",
    "wonderful",
    "dull",
    "actors",
    "scenes",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>"]
HIDDEN = 32


def make_tokenizer(masked: bool, seq2seq: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: [CLS] x [SEP] for masked LMs, <s> x for causal LMs, x [SEP]
    for encoder-decoders ([SEP] ends a sequence)."""
    specials = [*SPECIALS[:-1], "<extra_id_0>"] if seq2seq else SPECIALS  # T5's sentinel
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    if masked:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    if seq2seq:
        tok.post_processor = processors.TemplateProcessing(
            single="$A [SEP]", special_tokens=[("[SEP]", 3)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="[PAD]",
            unk_token="[UNK]",
            eos_token="[SEP]",
            additional_special_tokens=["<extra_id_0>"],
        )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 5)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<s>",
        eos_token="[SEP]",
    )


def small_config(**extra) -> dict:
    """The settings every tiny model shares, with ``extra``."""
    return dict(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )


def make_model(kind: str) -> torch.nn.Module:
    """A tiny randomly initialised model of one family."""
    torch.manual_seed(0)
    if kind == "bert":
        return BertForMaskedLM(BertConfig(**small_config(pad_token_id=0)))
    if kind == "bert-nodropout":
        return BertForMaskedLM(
            BertConfig(
                **small_config(pad_token_id=0),
                hidden_dropout_prob=0,
                attention_probs_dropout_prob=0,
            )
        )
    if kind == "bert-encoder":
        return BertModel(BertConfig(**small_config(pad_token_id=0)))
    if kind == "roberta":
        return RobertaForMaskedLM(RobertaConfig(**small_config(pad_token_id=0)))
    if kind == "gpt2":
        cfg = small_config()
        return GPT2LMHeadModel(
            GPT2Config(
                bos_token_id=5,
                eos_token_id=3,
                vocab_size=cfg["vocab_size"],
                n_embd=HIDDEN,
                n_layer=2,
                n_head=4,
                n_positions=128,
            )
        )
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**small_config(num_key_value_heads=2, pad_token_id=0)))
    if kind == "t5":
        return T5ForConditionalGeneration(
            T5Config(
                vocab_size=len(SPECIALS) + len(WORDS),
                d_model=HIDDEN,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=0,
                eos_token_id=3,
                decoder_start_token_id=0,
            )
        )
    if kind == "bart":
        return BartForConditionalGeneration(
            BartConfig(
                vocab_size=len(SPECIALS) + len(WORDS),
                d_model=HIDDEN,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=128,
                pad_token_id=0,
                bos_token_id=5,
                eos_token_id=3,
                decoder_start_token_id=3,
                forced_eos_token_id=None,
            )
        )
    raise ValueError(kind)


MASKED = {"bert", "bert-nodropout", "bert-encoder", "roberta"}
SEQ2SEQ = {"t5", "bart"}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """Returns a function kind -> folder holding that tiny model and its tokenizer."""
    root = tmp_path_factory.mktemp("models")
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            folder = root / kind
            make_model(kind).save_pretrained(folder)
            make_tokenizer(kind in MASKED, kind in SEQ2SEQ).save_pretrained(folder)
            made[kind] = folder
        return made[kind]

    return get


POSITIVE = ["great", "good", "wonderful", "fun", "fine"]
NEGATIVE = ["terrible", "bad", "awful", "boring", "dull"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """A toy sentiment task the tiny models can learn: the label word is in the text."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        words = POSITIVE if i % 2 else NEGATIVE
        word = words[int(torch.randint(len(words), (1,), generator=g))]
        rows.append({"text": f"the movie was {word}", "label": i % 2})
    return rows


def write_splits(folder: Path, rows, sizes=(64, 24, 24)) -> Path:
    """train / validation / test jsonl files of ``rows(n, seed)``; returns the folder."""
    import json

    for name, n, seed in zip(("train", "validation", "test"), sizes, (0, 1, 2), strict=True):
        with open(folder / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows(n, seed))
    return folder


@pytest.fixture
def sentiment_data(tmp_path):
    """train / validation / test jsonl files of the toy task; returns their folder."""
    return write_splits(tmp_path, sentiment_rows)


def run_config(model_folder: Path, data_folder: Path, **overrides) -> dict:
    """A small, complete run config as a mapping."""
    config = {
        "backbone": {"name": str(model_folder)},
        "template": "<x> it was [P1][P2] [MASK].",
        "inputs": {"x": "text"},
        "head": {"verbalizer": {"positive": ["great", "good"], "negative": ["terrible", "bad"]}},
        "data": {
            "train": str(data_folder / "train.jsonl"),
            "validation": str(data_folder / "validation.jsonl"),
            "test": str(data_folder / "test.jsonl"),
            "label_map": {"1": "positive", "0": "negative"},
        },
        "trainer": {"epochs": 3, "batch_size": 8, "progress": False},
        "output_dir": str(data_folder / "run"),
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def zero_shot_tagger(folder: Path):
    """A tagger (token head, classes O and B-x) on a model folder, trained on nothing."""
    from promptkit.text.config import ModelConfig
    from promptkit.text.model import build_model

    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(folder)},
            "template": "<x>",
            "head": {"type": "token", "classes": ["O", "B-x"]},
            "trainable": [],
        }
    )
    return build_model(recipe)


REVIEWS = ["the movie was great", "i hated this boring film and the acting", "fun"]
ANSWERS = ["good", "bad and dull", "fine"]


def review_batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``REVIEWS`` (with ``ANSWERS`` for a model that writes text) as one padded batch."""
    examples = model.examples(REVIEWS)
    if model.task.has_classes:
        return model.collate(model.encode(examples))
    return model.collate(model.encode(examples, ANSWERS))


def seeded_step(
    model: torch.nn.Module, batch: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Logits and every trainable parameter's gradient (None where none reached it) of one
    forward and backward, with the dropout masks seeded (two runs draw the same ones)."""
    model.zero_grad()
    torch.manual_seed(0)
    logits = model(batch)
    logits.float().square().mean().backward()
    grads = {
        n: None if p.grad is None else p.grad.clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    return logits.detach(), grads


def prompt_model(folder: Path, **recipe) -> torch.nn.Module:
    """A prompt model on the tiny backbone in ``folder``, built from recipe keys, training."""
    from promptkit.core.config import validate
    from promptkit.text.config import ModelConfig
    from promptkit.text.model import build_model

    config = {"backbone": {"name": str(folder)}, "trainable": ["prompts", "head"], **recipe}
    return build_model(validate(ModelConfig, config, "recipe")).train()
