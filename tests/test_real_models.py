"""A few training steps on a real pretrained model (all-MiniLM-L6-v2) and real data (MR,
WNUT-16).

Marked slow; `make test` fetches the assets first (examples/assets.py).
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from promptkit.backbone import load_backbone
from promptkit.config import validate_config
from promptkit.pipeline import fit
from promptkit.predictor import load

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def assets() -> Path:
    sys.path.insert(0, str(EXAMPLES))
    from assets import ensure

    return ensure(["minilm", "mr", "wnut16"])


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
    reloaded = load(result.run_dir)
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
    reloaded = load(result.run_dir)
    assert reloaded.predict(tweets) == result.predictor.predict(tweets)
    assert [len(tags) for tags in reloaded.predict(tweets)] == [8, 3]
