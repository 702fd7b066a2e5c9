"""E2E NLG table-to-text on SmolLM2-135M: zero-shot, prompt tuning, prefix tuning, infix,
P-tuning v2, LayerNorm tuning and full fine-tuning, in one table with BLEU and ROUGE-L.

From the repository root:  python examples/generation/run.py [--set trainer.epochs=2 ...]

Fetches the offline assets (SmolLM2-135M, E2E) if they are missing, trains each method on the
training inputs (e2e.yaml plus the method's preset and template), writes the test inputs'
descriptions with greedy decoding, scores them against every reference of their input
(sacreBLEU, rouge-score), prints the table and a few samples beside their references, and
writes both to runs/e2e/comparison.json. BitFit has nothing to train on SmolLM2, which has no
bias terms: LayerNorm tuning (the normalisation layers' scales) takes its row. P-tuning v2's
prefixes start as the backbone's own keys and values of sampled words (`prompts.start:
activations`): from normal(0, 1) noise the answer loss starts above 11 and one short epoch
does not recover.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from assets import ensure  # noqa: E402

import promptkit  # noqa: E402
from promptkit.core.config import merged  # noqa: E402
from promptkit.core.data import Split  # noqa: E402
from promptkit.runs.config import validate_config  # noqa: E402
from promptkit.runs.fitting import evaluate_split  # noqa: E402
from promptkit.text.data import load_splits  # noqa: E402
from promptkit.text.model import build_model  # noqa: E402

ANSWER = "\nDescription: [MASK]"
METHODS: dict[str, dict[str, Any]] = {
    "prompt tuning (20 soft tokens)": {
        "preset": "prompt_tuning",
        "template": "[P*20] <x>" + ANSWER,
        "trainer": {"lr": {"prompts": 0.03}},
    },
    "prefix tuning (10 prefixes, MLP)": {
        "preset": "prefix_tuning",
        "template": "[P*10] <x>" + ANSWER,
        "trainer": {"lr": {"prompts": 0.005}},
    },
    "infix (10 deep prompts after the input)": {
        "preset": "deep_prompts",
        "template": "<x> [P*10]" + ANSWER,
        "trainer": {"lr": {"prompts": 0.01}},
    },
    "P-tuning v2 (16 prefixes from words' keys/values)": {
        "preset": "ptuning_v2",
        "template": "[P*16] <x>" + ANSWER,
        "prompts": {"start": "activations"},
        "trainer": {"lr": {"prompts": 0.01}},
    },
    "LayerNorm tuning (BitFit: no biases)": {
        "preset": "norm_tuning",
        "template": "<x>" + ANSWER,
        "trainer": {"lr": {"norm": 0.003}},
    },
    "full fine-tuning": {
        "preset": "full_finetune",
        "template": "<x>" + ANSWER,
        "trainer": {"lr": {"all": 0.00005}},
    },
}
SAMPLES = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "e2e.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    ensure(["smollm2", "e2e"])
    console = Console()
    base = yaml.safe_load(args.config.read_text())
    base = merged(base, _overrides(args.overrides))
    out = Path(base["output_dir"])
    config = validate_config(base, str(args.config))
    backbone = promptkit.load_backbone(config.backbone.name, config.backbone.kind)
    rows, samples = [], {}

    started = time.monotonic()
    zero = build_model(config.recipe(), backbone=backbone)
    splits, _ = load_splits(config.data, zero.task, [], config.inputs, zero.template.inputs, 0)
    console.rule("zero-shot")
    rows.append(_row("zero-shot", zero, splits.test, config, 0, 0, started))
    samples["zero-shot"] = _written(zero, splits.test)

    for name, method in METHODS.items():
        data = merged(base, {**method, "output_dir": str(out / method["preset"])})
        data["trainable"] = [g for g in _preset_groups(data) if g != "head"]
        method_config = validate_config(data, f"{args.config} + {name}")
        console.rule(name)
        started = time.monotonic()
        result = promptkit.fit(method_config, backbone=_fresh(backbone), overwrite=True)
        rows.append(
            _row(
                name,
                result.predictor.model,
                None,
                method_config,
                result.trainable_parameters,
                result.saved_parameters,
                started,
                result.test,
            )
        )
        samples[name] = _written(result.predictor.model, splits.test)
    _print(console, rows, samples, splits.test)
    out.mkdir(parents=True, exist_ok=True)
    report = {"methods": rows, "samples": samples}
    (out / "comparison.json").write_text(json.dumps(report, indent=2))


def _overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _preset_groups(data: dict[str, Any]) -> list[str]:
    from promptkit import catalog

    return catalog.entry("methods", data["preset"])["config"]["trainable"]


def _fresh(backbone: Any) -> Any:
    """The backbone with its pretrained weights (full fine-tuning changes them in place)."""
    return promptkit.load_backbone(backbone.name, backbone.kind)


def _row(
    name: str,
    model: Any,
    test: Split | None,
    config: Any,
    trained: int,
    saved: int,
    started: float,
    scores: dict[str, float] | None = None,
) -> dict[str, Any]:
    if scores is None:
        scores = evaluate_split(model, test, config.trainer.eval_batch_size, progress=True)
    return {
        "method": name,
        "template": config.template,
        "bleu": scores["bleu"],
        "rougeL": scores["rougeL"],
        "chrf": scores["chrf"],
        "trained_parameters": trained,
        "saved_parameters": saved,
        "minutes": (time.monotonic() - started) / 60,
    }


def _written(model: Any, test: Split) -> list[str]:
    return model.generate(_sampled(test))


def _sampled(test: Split) -> list[dict[str, Any]]:
    """The first SAMPLES test examples with distinct inputs."""
    distinct: dict[str, dict[str, Any]] = {}
    for example in test.examples:
        distinct.setdefault(json.dumps(example, sort_keys=True), example)
    return list(distinct.values())[:SAMPLES]


def _print(console: Console, rows: list[dict], samples: dict, test: Split) -> None:
    table = Table(
        "method",
        "BLEU",
        "ROUGE-L",
        "trained params",
        "saved params",
        "minutes",
        title="E2E NLG test inputs, SmolLM2-135M, greedy decoding",
    )
    for row in rows:
        table.add_row(
            row["method"],
            f"{row['bleu']:.1f}",
            f"{row['rougeL']:.1f}",
            f"{row['trained_parameters']:,}",
            f"{row['saved_parameters']:,}",
            f"{row['minutes']:.1f}",
        )
    console.print(table)
    for i, example in enumerate(_sampled(test)):
        console.rule(f"sample {i + 1}")
        console.print(Text(f"input:     {example['input']}"))
        references = [t for e, t in zip(test.examples, test.labels, strict=True) if e == example]
        console.print(Text(f"reference: {references[0]}"))
        for name, written in samples.items():
            console.print(Text(f"{name}: {written[i]}"))


if __name__ == "__main__":
    main()
