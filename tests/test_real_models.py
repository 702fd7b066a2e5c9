"""A few training steps on real pretrained models (all-MiniLM-L6-v2, SmolLM2-135M) and real
data (MR, WNUT-16, E2E NLG).

Marked slow; `make test` fetches the assets first (examples/assets.py).
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from promptkit.backbone.loading import load_backbone
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit
from promptkit.serving.predictor import load_run

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def assets() -> Path:
    sys.path.insert(0, str(EXAMPLES))
    from assets import ensure

    return ensure(["minilm", "mr", "wnut16", "smollm2", "e2e"])


def test_prompt_tuning_with_bitfit_on_minilm(assets, tmp_path):
    mr = assets / "mr"
    config = validate_config(
        {
            "backbone": {"name": str(assets / "minilm-l6")},
            "template": "[P*8] <x>",
            "inputs": {"x": "sentence"},
            "head": {"type": "classifier", "pool": "mean"},
            "trainable": ["prompts", "head", "bias"],
            "max_length": 64,
            "data": {
                "train": str(mr / "train.jsonl"),
                "validation": str(mr / "validation.jsonl"),
                "few_shot": 32,
                "validation_few_shot": 32,
            },
            "trainer": {
                "epochs": 3,
                "batch_size": 16,
                "progress": False,
                "warmup_ratio": 0.0,
                "lr": {"prompts": 0.01, "head": 0.01, "bias": 0.001},
            },
            "output_dir": str(tmp_path / "run"),
        }
    )
    backbone = load_backbone(config.backbone.name)
    assert backbone.kind == "encoder"
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    result = fit(config, backbone=backbone)

    for name, p in backbone.model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        on_path = not name.startswith("pooler.")  # mean pooling does not use BERT's pooler
        assert changed == (name.endswith("bias") and on_path), name
    epochs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert result.validation["accuracy"] > 0.5

    sentences = ["a gripping , beautifully acted film .", "a dull , lifeless mess ."]
    reloaded = load_run(result.run_dir)
    torch.testing.assert_close(reloaded.logits(sentences), result.predictor.logits(sentences))


def test_ptuning_v2_tagger_on_wnut16(assets, tmp_path):
    wnut = assets / "wnut16"
    config = validate_config(
        {
            "preset": "ptuning_v2",
            "backbone": {"name": str(assets / "minilm-l6")},
            "inputs": {"x": "tokens"},
            "head": {"type": "token"},
            "max_length": 64,
            "data": {
                "train": str(wnut / "train.conll"),
                "validation": str(wnut / "validation.conll"),
                "label_column": "ner_tags",
                "few_shot": 200,  # sentences
                "validation_few_shot": 100,
            },
            "trainer": {"epochs": 2, "batch_size": 16, "progress": False},
            "output_dir": str(tmp_path / "run"),
        }
    )
    backbone = load_backbone(config.backbone.name)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    result = fit(config, backbone=backbone)

    assert all(torch.equal(before[n], p) for n, p in backbone.model.named_parameters())
    epochs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert {"precision", "recall", "f1"} <= set(epochs[-1])
    assert result.validation["f1"] == max(e["f1"] for e in epochs)
    tweets = ["Watching the Yankees game in New York tonight", "@paul thanks !"]
    reloaded = load_run(result.run_dir)
    assert reloaded.predict(tweets) == result.predictor.predict(tweets)
    assert [len(tags) for tags in reloaded.predict(tweets)] == [8, 3]


def test_ptuning_v2_writes_e2e_descriptions_with_smollm2(assets, tmp_path):
    """A few P-tuning v2 steps on real table-to-text data (prefixes started from the keys and
    values of sampled words) lower the answer loss and write descriptions; the saved run
    writes the same text once loaded."""
    e2e = assets / "e2e"
    train = [json.loads(line) for line in (e2e / "train.jsonl").read_text().splitlines()]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[:64]))
    test = [json.loads(line) for line in (e2e / "test.jsonl").read_text().splitlines()][:16]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    config = validate_config(
        {
            "backbone": {"name": str(assets / "smollm2-135m")},
            "preset": "ptuning_v2",
            "template": "[P*8] <x>\nDescription: [MASK]",
            "prompts": {"start": "activations"},  # from noise, a few steps do not recover
            "inputs": {"x": "input"},
            "head": {"type": "generation", "max_new_tokens": 24, "stop": ["\n"]},
            "trainable": ["prompts"],
            "max_length": 96,
            "data": {
                "train": str(tmp_path / "train.jsonl"),
                "validation": str(tmp_path / "test.jsonl"),
                "test": str(tmp_path / "test.jsonl"),
                "label_column": "target",
            },
            "trainer": {"epochs": 2, "batch_size": 16, "progress": False, "lr": {"prompts": 0.01}},
            "output_dir": str(tmp_path / "run"),
        }
    )
    result = fit(config)
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[1]["loss"] < lines[0]["loss"]
    assert result.test["bleu"] > 0 and result.test["rougeL"] > 10
    inputs = [{"input": row["input"]} for row in test[:3]]
    written = result.predictor.generate(inputs)
    assert all(text.strip() for text in written)
    assert load_run(result.run_dir).generate(inputs) == written
