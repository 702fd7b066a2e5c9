"""Text answers: teacher-forced training on the answer only, decoding through generate() with
the prompts in place at every step, on decoder-only and encoder-decoder backbones."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_config

from promptkit.backbone.prompting import PROMPTING_KWARG
from promptkit.core.config import validate
from promptkit.errors import ConfigError, DataWarning, PromptkitError, TemplateError
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run
from promptkit.tasks import IGNORED
from promptkit.text.config import ModelConfig
from promptkit.text.decoding import carried
from promptkit.text.model import build_model

DECODERS = ["gpt2", "llama"]
SEQ2SEQ = ["t5", "bart"]
PLACEMENTS = {"input": "[P*3] <x>", "prefix": "[P*3] <x>", "deep": "<x> [P*3]"}
TEXTS = ["the movie was great", "bad", "i loved this film and the acting was fun"]
ANSWERS = ["great", "so bad", "fun"]


def generator(model_dir, family, placement="input", template=None, **head):
    template = template or PLACEMENTS[placement] + ("" if family in SEQ2SEQ else " [MASK]")
    recipe = validate(
        ModelConfig,
        {
            "backbone": {"name": str(model_dir(family))},
            "template": template,
            "head": {"type": "generation", "max_new_tokens": 4, **head},
            "prompts": {"placement": placement},
            "trainable": ["prompts"] if "[P" in template else [],
        },
        "recipe",
    )
    model = build_model(recipe).eval()
    with torch.no_grad():
        model.prompts.table.normal_(generator=torch.Generator().manual_seed(1))
    return model


def steps_and_logits(model, examples, **options):
    """generate()'s tokens and its logits at each step, for a batch of examples."""
    batch = model.collate(model.encode(examples))
    kwargs = model.placement(batch, model.prompts())
    kwargs.pop("position_ids", None)
    prompting = kwargs.pop(PROMPTING_KWARG, None)
    with carried(model.lm, prompting), torch.no_grad():
        out = model.lm.generate(
            **kwargs,
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
            **options,
        )
    return batch, out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("family", DECODERS)
def test_the_loss_covers_the_answer_and_its_end_whatever_the_padding_side(model_dir, family):
    model = generator(model_dir, family, "prefix")
    examples = model.examples(TEXTS)
    losses = []
    for side in ("left", "right"):
        model.padding_side = side
        batch = model.collate(model.encode(examples, ANSWERS))
        end = model.backbone.tokenizer.eos_token_id
        targets = batch["labels"][batch["labels"] != IGNORED].tolist()
        answer_ids = [[*model.backbone.tokenizer(" " + a)["input_ids"][1:], end] for a in ANSWERS]
        assert sorted(targets) == sorted(t for ids in answer_ids for t in ids)
        losses.append(model.task.loss(model(batch), batch["labels"]))
    torch.testing.assert_close(losses[0], losses[1])


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("family", DECODERS + SEQ2SEQ)
def test_every_decoding_step_sees_the_prompts(model_dir, family, placement):
    """generate() with its key/value cache gives, at each step, the logits of a full forward
    over the prompt and the tokens written so far (no cache)."""
    model = generator(model_dir, family, placement)
    examples = model.examples(TEXTS[:1])
    batch, sequences, logits = steps_and_logits(model, examples)
    with torch.no_grad():
        if family in SEQ2SEQ:
            kwargs = model.placement(batch, model.prompts())
            full = model.lm(**kwargs, decoder_input_ids=sequences[:, :-1]).logits
        else:  # the prompt and the tokens written so far, as one input
            written = sequences[:, :-1]  # only new tokens: the prompt went in as embeddings
            longer = {
                "input_ids": torch.cat([batch["input_ids"], written], 1),
                "slot_ids": torch.cat([batch["slot_ids"], torch.full_like(written, -1)], 1),
                "attention_mask": torch.ones(1, batch["input_ids"].shape[1] + written.shape[1]),
            }
            longer["attention_mask"] = longer["attention_mask"].long()
            full = model.lm(**model.placement(longer, model.prompts())).logits[:, -4:]
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
    assert (logits[0, 0] - logits[0, 1]).abs().max() > 0


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("family", DECODERS + SEQ2SEQ)
def test_an_example_gets_the_same_tokens_alone_and_in_a_padded_batch(model_dir, family, placement):
    model = generator(model_dir, family, placement)
    examples = model.examples(TEXTS)
    for options in ({}, {"num_beams": 2}):
        _, together, _ = steps_and_logits(model, examples, **options)
        for row, example in enumerate(examples):
            _, alone, _ = steps_and_logits(model, [example], **options)
            assert together[row, -4:].tolist() == alone[0, -4:].tolist()


def test_prefixes_go_into_the_chosen_attentions_of_an_encoder_decoder(model_dir):
    outputs = []
    for attention in (["encoder"], ["decoder"], ["cross"], ["encoder", "decoder", "cross"]):
        recipe = validate(
            ModelConfig,
            {
                "backbone": {"name": str(model_dir("t5"))},
                "template": "[P*2] <x>",
                "head": {"type": "generation"},
                "prompts": {"placement": "prefix", "attention": attention},
            },
            "recipe",
        )
        model = build_model(recipe).eval()
        assert model.prompts.table.shape[1] == len(attention) * 2 * (2 * 4 * 8)  # 2 layers
        assert len(model.placement.targets) == 2 * len(attention)
        batch = model.collate(model.encode(model.examples(TEXTS[:2]), ANSWERS[:2]))
        outputs.append(model(batch))
    assert all((a - b).abs().max() > 1e-4 for i, a in enumerate(outputs) for b in outputs[i + 1 :])
    with pytest.raises(ConfigError, match="drop the key"):
        build_model(
            validate(
                ModelConfig,
                {
                    "backbone": {"name": str(model_dir("gpt2"))},
                    "template": "[P*2] <x> [MASK]",
                    "head": {"type": "generation"},
                    "prompts": {"placement": "prefix", "attention": ["cross"]},
                },
                "recipe",
            )
        )


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_a_masked_out_prefix_gives_the_plain_encoder_decoder(model_dir, family):
    """Every attention (T5's relative position bias included) sees the prefix only through
    its own columns: hidden, they leave the model as it was."""
    model = generator(model_dir, family, "prefix")
    plain = generator(model_dir, family, "input", template="<x>")
    batch = model.collate(model.encode(model.examples(TEXTS), ANSWERS))
    prompted = model(batch)
    batch["prefix_visible"] = torch.zeros(len(TEXTS), 3, dtype=torch.bool)
    torch.testing.assert_close(model(batch), plain(batch), atol=1e-5, rtol=1e-5)
    assert (prompted - plain(batch)).abs().max() > 1e-4


def test_the_verbalizer_of_an_encoder_decoder_reads_the_first_answer_token(model_dir):
    recipe = validate(
        ModelConfig,
        {
            "backbone": {"name": str(model_dir("t5"))},
            "template": "<x> it was [MASK]",
            "head": {"verbalizer": {"positive": ["great"], "negative": ["bad"]}},
            "trainable": [],
        },
        "recipe",
    )
    model = build_model(recipe).eval()
    batch = model.collate(model.encode(model.examples(TEXTS[:1])))
    tokenizer = model.backbone.tokenizer
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    assert sentinel in batch["input_ids"][0].tolist()  # [MASK] is T5's sentinel
    kwargs = model.placement(batch, model.prompts())
    with torch.no_grad():
        logits = model.lm(**kwargs, decoder_input_ids=torch.tensor([[0, sentinel]])).logits
    words = tokenizer(["great", "bad"], add_special_tokens=False)["input_ids"]
    expected = logits[0, -1].log_softmax(-1)[[w[0] for w in words]]
    torch.testing.assert_close(model(batch)[0], expected)


def generation_data(tmp_path, n=48):
    rows = [
        {"text": f"the movie was {w}", "target": f"it was really {w}"}
        for w in ["great", "bad", "fun", "dull", "good", "awful"] * (n // 6)
    ]
    for name, part in (("train", rows), ("validation", rows[:12]), ("test", rows[12:24])):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    config = run_config(
        tmp_path,
        tmp_path,
        template="<x> so it was [MASK]",
        head={"type": "generation", "max_new_tokens": 6},
        trainable=["all"],
        trainer={"epochs": 10, "batch_size": 8, "progress": False, "lr": {"all": 0.01}},
    )
    config["data"] = {**config["data"], "label_column": "target", "label_map": None}
    return config


@pytest.mark.parametrize(("family", "placement"), [("llama", "prefix"), ("t5", "input")])
def test_a_generator_learns_saves_and_loads(model_dir, tmp_path, family, placement):
    config = generation_data(tmp_path)
    config["backbone"] = {"name": str(model_dir(family))}
    config["template"] = PLACEMENTS[placement] + (" so it was" if family in SEQ2SEQ else " [MASK]")
    config["prompts"] = {"placement": placement}
    config["trainable"] = ["prompts", "all"]
    config["trainer"]["metric"] = "bleu"
    result = fit(validate_config(config))
    assert result.test["bleu"] > 50 and result.test["rougeL"] > 50 and "loss" in result.test
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("bleu" in line for line in lines)
    texts = ["the movie was fun", "the movie was dull"]
    written = result.predictor.predict(texts)
    assert written == ["it was really fun", "it was really dull"]
    assert load_run(result.run_dir).predict(texts) == written
    assert load_run(result.run_dir).generate(texts, num_beams=2) == written
    with pytest.raises(PromptkitError, match="writes text"):
        result.predictor.predict_proba(texts)


def test_the_loss_picks_the_best_epoch_by_default(model_dir, tmp_path):
    config = generation_data(tmp_path)
    config["backbone"] = {"name": str(model_dir("gpt2"))}
    config["trainer"]["epochs"] = 2
    result = fit(validate_config(config))
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    validation = [line for line in lines if line["split"] == "validation"]
    assert all("bleu" not in line for line in validation)  # decoding is skipped
    assert validation[1]["best"] == (validation[1]["loss"] < validation[0]["loss"])
    assert {"bleu", "chrf", "rougeL", "loss"} <= set(result.test)


def test_a_target_template_and_cut_answers(model_dir, tmp_path):
    config = generation_data(tmp_path)
    config["backbone"] = {"name": str(model_dir("gpt2"))}
    config["head"]["target"] = "it was {{ target }} {{ target }}"
    config["data"]["label_column"] = "answer"
    config["max_length"] = 8
    config["trainer"]["epochs"] = 1
    with pytest.warns(DataWarning, match=r"answers were cut to fit max_length=8"):
        result = fit(validate_config(config))
    assert result.test is not None


def test_bad_generation_configs_are_refused_early(model_dir):
    base = {"backbone": {"name": str(model_dir("gpt2"))}, "template": "<x> [MASK]", "trainable": []}
    with pytest.raises(ConfigError, match="temperature shape sampling, but do_sample is false"):
        validate(ModelConfig, {**base, "head": {"type": "generation", "temperature": 0.7}}, "r")
    recipe = validate(
        ModelConfig,
        {**base, "template": "<x> [MASK] and more", "head": {"type": "generation"}},
        "r",
    )
    with pytest.raises(TemplateError, match="must end the template"):
        build_model(recipe)
    model = generator(model_dir, "gpt2")
    with pytest.raises(ConfigError, match="num_beams"):
        model.generate(model.examples(TEXTS[:1]), num_beams=0)
    seq2seq = validate(
        ModelConfig,
        {**base, "backbone": {"name": str(model_dir("t5"))}, "head": {"type": "generation"}},
        "r",
    )
    with pytest.raises(TemplateError, match="drop \\[MASK\\]"):
        build_model(seq2seq)
    encoder = validate(
        ModelConfig,
        {**base, "backbone": {"name": str(model_dir("bert"))}, "head": {"type": "generation"}},
        "r",
    )
    with pytest.raises(ConfigError, match="cannot write text"):
        build_model(encoder)


def test_the_command_line_writes_and_scores_answers(model_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from promptkit.cli import app

    config = generation_data(tmp_path)
    config["backbone"] = {"name": str(model_dir("llama"))}
    config["trainer"]["epochs"] = 2
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    assert runner.invoke(app, ["fit", str(path)]).exit_code == 0
    out = tmp_path / "written.jsonl"
    command = ["predict", config["output_dir"], "--input", str(tmp_path / "test.jsonl")]
    written = runner.invoke(app, [*command, "--output", str(out), "--decoding", "num_beams=2"])
    assert written.exit_code == 0, written.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(r["prediction"], str) for r in rows)
    bad = runner.invoke(app, [*command, "--output", str(tmp_path / "x"), "--decoding", "top_k=3"])
    assert bad.exit_code == 2 and "do_sample is false" in bad.output
    scored = runner.invoke(
        app, ["eval", config["output_dir"], "--data", str(tmp_path / "test.jsonl")]
    )
    assert scored.exit_code == 0, scored.output
    assert {"bleu", "chrf", "rougeL", "loss"} <= set(json.loads(scored.stdout.splitlines()[-1]))
