"""Few-shot P-tuning on movie reviews (MR) with SmolLM2-135M, against the zero-shot prompt.

From the repository root:  python examples/sentiment/run.py [--set trainer.epochs=3 ...]

1. fetches the offline assets (SmolLM2-135M, the MR sentences) if they are missing;
2. scores the test split zero-shot with the same template in hard words only
   ("<x> It was [MASK]." and the label words great/good vs terrible/bad);
3. trains the two soft slots of "<x> It was [P1][P2] [MASK]." with the LSTM prompt encoder
   on 32 examples per class (ptuning_cloze.yaml), then scores the test split;
4. prints both accuracies and the number of trained parameters, and writes them to
   <output_dir>/comparison.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from assets import ensure  # noqa: E402

import promptkit  # noqa: E402
from promptkit.runs.fitting import evaluate_split  # noqa: E402
from promptkit.text.data import load_splits  # noqa: E402
from promptkit.text.model import build_model  # noqa: E402

ZERO_SHOT_TEMPLATE = "<x> It was [MASK]."  # the config's template without its soft slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "ptuning_cloze.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    ensure(["smollm2", "mr"])
    config = promptkit.load_config(args.config, args.overrides)
    console = Console()

    backbone = promptkit.load_backbone(config.backbone.name, config.backbone.kind)
    zero_shot = config.recipe().model_copy(update={"template": ZERO_SHOT_TEMPLATE, "trainable": []})
    hard = build_model(zero_shot, backbone=backbone)
    splits, _ = load_splits(
        config.data, hard.task, hard.classes, config.inputs, hard.template.inputs, config.seed
    )
    console.print(f"zero-shot: scoring {len(splits.test)} test sentences ...")
    zero = evaluate_split(hard, splits.test, config.trainer.eval_batch_size, progress=True)

    console.print(f"P-tuning on {len(splits.train)} examples ...")
    trained = promptkit.fit(config, backbone=backbone, overwrite=True)

    rows = [
        ("zero-shot, hard prompt", ZERO_SHOT_TEMPLATE, zero["accuracy"], 0, 0),
        (
            "P-tuning (LSTM encoder)",
            config.template,
            trained.test["accuracy"],
            trained.trainable_parameters,
            trained.saved_parameters,
        ),
    ]
    table = Table(
        "method",
        "template",
        "test accuracy",
        "trained params",
        "saved params",
        title=f"MR sentiment, {config.data.few_shot} examples per class, SmolLM2-135M",
    )
    for name, template, accuracy, n_trained, n_saved in rows:
        table.add_row(name, Text(template), f"{accuracy:.3f}", f"{n_trained:,}", f"{n_saved:,}")
    console.print(table)
    report = [
        dict(
            zip(
                ("method", "template", "test_accuracy", "trained_parameters", "saved_parameters"),
                row,
                strict=True,
            )
        )
        for row in rows
    ]
    (Path(config.output_dir) / "comparison.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
