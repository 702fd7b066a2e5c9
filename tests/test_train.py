"""Training, checkpoints, resume, save -> load, and the errors around them."""

import json
import os
import signal

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import run_config
from safetensors.torch import load_file

from promptkit.core.config import TrainerConfig
from promptkit.core.run_folder import RunFolder
from promptkit.core.training import _accelerator
from promptkit.errors import (
    BackboneMismatchError,
    ConfigError,
    TrainingError,
    TrainingInterrupted,
)
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run
from promptkit.text.model import PromptModel


def metrics_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fit_learns_saves_and_reloads_with_identical_predictions(model_dir, sentiment_data):
    cfg = validate_config(
        run_config(
            model_dir("bert"),
            sentiment_data,
            trainable=["prompts", "all"],
            trainer={
                "epochs": 10,
                "batch_size": 8,
                "progress": False,
                "lr": {"prompts": 0.05, "all": 3e-3},
            },
        )
    )
    result = fit(cfg)
    run_dir = result.run_dir
    assert result.test["accuracy"] >= 0.9
    assert {p.name for p in run_dir.iterdir()} >= {
        "prompt.safetensors",
        "promptkit.json",
        "metrics.jsonl",
        "resume",
        "config.yaml",
    }
    lines = metrics_lines(run_dir)
    assert [m["epoch"] for m in lines if m["split"] == "validation"] == list(range(1, 11))
    assert lines[-1]["split"] == "test"
    saved = load_file(str(run_dir / "prompt.safetensors"))
    assert saved["prompts.table"].shape == (2, 32)
    assert all(k == "prompts.table" or k.startswith("lm.") for k in saved)
    assert sum(v.numel() for v in saved.values()) == result.saved_parameters

    predictor = load_run(run_dir)
    texts = ["the movie was great", "the movie was awful", "the movie was boring", "fun and good"]
    examples = [{"text": t} for t in texts]
    assert predictor.predict(texts) == ["positive", "negative", "negative", "positive"]
    torch.testing.assert_close(predictor.logits(examples), result.predictor.logits(examples))


def test_encoder_is_collapsed_on_save_and_resume_keeps_it(model_dir, sentiment_data):
    cfg = validate_config(
        run_config(
            model_dir("gpt2"), sentiment_data, prompts={"encoder": "lstm", "encoder_hidden": 16}
        )
    )
    result = fit(cfg)
    saved = load_file(str(result.run_dir / "prompt.safetensors"))
    assert list(saved) == ["prompts.table"]
    resume = RunFolder(result.run_dir).read_resume()
    assert any("encoder" in k for k in resume["trainable"])
    assert result.trainable_parameters > result.saved_parameters == 64


def test_loading_onto_another_backbone_is_an_error(model_dir, sentiment_data, tmp_path):
    result = fit(validate_config(run_config(model_dir("bert"), sentiment_data)))
    other = tmp_path / "other-bert"
    from conftest import make_model, make_tokenizer

    torch.manual_seed(1)
    model = make_model("bert")
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.01)
    model.save_pretrained(other)
    make_tokenizer(True).save_pretrained(other)
    with pytest.raises(BackboneMismatchError, match="trained on .* fingerprint"):
        load_run(result.run_dir, backbone=str(other))


def test_resume_after_interrupt_matches_an_uninterrupted_run(
    model_dir, sentiment_data, monkeypatch
):
    base = run_config(model_dir("bert"), sentiment_data, trainable=["prompts", "bias"])
    straight = fit(validate_config({**base, "output_dir": str(sentiment_data / "straight")}))

    calls = {"n": 0}
    forward = PromptModel.forward

    def interrupted(self, batch):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 11:  # in the 3rd step of epoch 2 (8 batches an epoch)
                os.kill(os.getpid(), signal.SIGINT)
        return forward(self, batch)

    monkeypatch.setattr(PromptModel, "forward", interrupted)
    cfg = validate_config({**base, "output_dir": str(sentiment_data / "resumed")})
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 3"):
        fit(cfg)
    state = RunFolder(sentiment_data / "resumed").read_resume()
    assert state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] == 3
    with pytest.raises(ConfigError, match="continue it with --resume"):
        fit(cfg)
    resumed = fit(cfg, resume=True)
    a = load_file(str(straight.run_dir / "prompt.safetensors"))
    b = load_file(str(resumed.run_dir / "prompt.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert resumed.test == straight.test


def test_resume_without_state_is_an_error(model_dir, sentiment_data):
    cfg = validate_config(run_config(model_dir("bert"), sentiment_data))
    with pytest.raises(TrainingError, match="no resume state"):
        fit(cfg, resume=True)


def test_nan_loss_stops_with_a_clear_error(model_dir, sentiment_data, monkeypatch):
    forward = PromptModel.forward
    monkeypatch.setattr(PromptModel, "forward", lambda self, b: forward(self, b) * float("nan"))
    cfg = validate_config(run_config(model_dir("bert"), sentiment_data))
    with pytest.raises(TrainingError, match="loss is nan.*lower the learning rates"):
        fit(cfg)
    assert RunFolder(sentiment_data / "run").read_resume() is not None


def test_a_diverged_run_resumes_from_its_last_good_state_with_lower_rates(
    model_dir, sentiment_data, monkeypatch
):
    forward = PromptModel.forward
    calls = {"n": 0}

    def diverging(self, batch):
        calls["n"] += self.training
        return forward(self, batch) * (float("inf") if calls["n"] == 11 else 1.0)

    monkeypatch.setattr(PromptModel, "forward", diverging)
    config = run_config(model_dir("bert"), sentiment_data)
    with pytest.raises(TrainingError, match=r"epoch 2, step 2.*end of epoch 1.*prompts=0.001"):
        fit(validate_config(config))
    state = RunFolder(sentiment_data / "run").read_resume()
    assert state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["trainable"].values())
    monkeypatch.setattr(PromptModel, "forward", forward)
    config["trainer"]["lr"] = {"prompts": 0.001}
    resumed = fit(validate_config(config), resume=True)
    lines = metrics_lines(sentiment_data / "run")
    assert [m["epoch"] for m in lines if m["split"] == "validation"] == [1, 2, 3]
    assert lines[0]["lr"] == pytest.approx(0.01 * 16 / 23)  # linear decay over 24 steps
    assert lines[1]["lr"] == pytest.approx(0.001 * 8 / 23)  # the new rate, same schedule
    assert resumed.test is not None


def test_early_stopping_and_accumulation(model_dir, sentiment_data):
    cfg = validate_config(
        run_config(
            model_dir("bert"),
            sentiment_data,
            trainer={
                "epochs": 5,
                "batch_size": 8,
                "grad_accum": 3,
                "patience": 1,
                "lr": {"prompts": 0.0},
                "progress": False,
            },
        )
    )
    fit(cfg)
    validation = [m for m in metrics_lines(sentiment_data / "run") if m["split"] == "validation"]
    assert len(validation) == 2  # no improvement after epoch 1, patience 1
    state = RunFolder(sentiment_data / "run").read_resume()
    assert state["progress"]["optimizer_steps"] == 2 * 3  # ceil(8 batches / 3) per epoch


def test_classifier_head_on_an_encoder_learns(model_dir, sentiment_data):
    cfg = validate_config(
        run_config(
            model_dir("bert-encoder"),
            sentiment_data,
            template="<x>",
            head={"type": "classifier", "pool": "mean"},
            trainable=["head", "all"],
            trainer={
                "epochs": 6,
                "batch_size": 8,
                "progress": False,
                "lr": {"head": 0.01, "all": 0.001},
            },
        )
    )
    result = fit(cfg)
    assert result.test["accuracy"] >= 0.9
    assert load_run(result.run_dir).classes == ["negative", "positive"]


def test_nothing_to_train_is_an_error(model_dir, sentiment_data):
    with pytest.raises(ConfigError, match="set trainer.epochs: 0 for a zero-shot run"):
        fit(validate_config(run_config(model_dir("bert"), sentiment_data, trainable=[])))
    verbalizer_head_only = run_config(model_dir("bert"), sentiment_data, trainable=["head"])
    with pytest.raises(TrainingError, match="nothing to train"):
        fit(validate_config(verbalizer_head_only))


def test_overwrite_replaces_an_earlier_run(model_dir, sentiment_data):
    cfg = validate_config(run_config(model_dir("bert"), sentiment_data))
    fit(cfg)
    (sentiment_data / "run" / "stale.txt").write_text("from the earlier run")
    with pytest.raises(ConfigError, match="replace it with --overwrite"):
        fit(cfg)
    before = (sentiment_data / "run" / "metrics.jsonl").read_text()
    fit(cfg, overwrite=True)
    assert (sentiment_data / "run" / "metrics.jsonl").read_text() == before  # replaced, not added
    assert (sentiment_data / "run" / "stale.txt").exists()  # not promptkit's: left alone


def test_gradient_checkpointing_trains_the_same_prompt(model_dir, sentiment_data):
    prompts = []
    for checkpointing in (False, True):
        config = run_config(
            model_dir("bert-nodropout"),
            sentiment_data,
            trainer={"epochs": 2, "progress": False, "gradient_checkpointing": checkpointing},
        )
        config["output_dir"] = str(sentiment_data / f"run-{checkpointing}")
        prompts.append(fit(validate_config(config)).predictor.model.prompts.table.detach())
    torch.testing.assert_close(prompts[0], prompts[1])


def test_fp16_on_the_cpu_says_it_is_not_used(model_dir, sentiment_data):
    config = run_config(
        model_dir("bert"), sentiment_data, trainer={"epochs": 1, "mixed_precision": "fp16"}
    )
    result = fit(validate_config(config))
    assert "fp16 needs a GPU: not used" in (result.run_dir / "train.log").read_text()


def test_fits_with_other_mixed_precisions_run_in_one_process(model_dir, sentiment_data):
    first = run_config(model_dir("bert"), sentiment_data, trainer={"epochs": 1})
    first["trainer"]["mixed_precision"] = "fp16"  # on the CPU: full precision, with a note
    fit(validate_config(first))
    second = {**first, "output_dir": str(sentiment_data / "bf16")}
    second["trainer"] = {**first["trainer"], "mixed_precision": "bf16"}
    result = fit(validate_config(second))
    assert AcceleratorState().mixed_precision == "bf16"
    assert result.run_dir.joinpath("prompt.safetensors").is_file()


@pytest.mark.parametrize("launched", [False, True])
def test_accelerate_state_is_started_afresh_unless_accelerate_launch_made_it(
    launched, monkeypatch, tmp_path
):
    if launched:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    else:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    Accelerator(cpu=True)
    AcceleratorState._shared_state["made_before"] = True
    _accelerator(TrainerConfig(), RunFolder(tmp_path))
    assert ("made_before" in AcceleratorState._shared_state) is launched
