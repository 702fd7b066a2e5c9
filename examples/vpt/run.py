"""Few-shot Visual Prompt Tuning: a ViT pretrained on Fashion-MNIST classes 0-4, adapted to
classes 5-9 with 50 images per class: VPT-shallow, VPT-deep, linear probe, full fine-tuning.

From the repository root:  python examples/vpt/run.py [--set trainer.epochs=10 ...]

Pretrains the backbone first if its checkpoint is missing (pretrain.py), then runs the four
recipes (vpt_shallow.yaml, vpt_deep.yaml, linear_probe.yaml, full_finetune.yaml), prints their
test accuracy on the 5,000 test images of classes 5-9 and the share of parameters each trains,
and writes the table to runs/vpt-comparison.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pretrain import pretrain  # noqa: E402

import promptkit  # noqa: E402

RECIPES = {
    "vpt_shallow": "VPT-shallow",
    "vpt_deep": "VPT-deep",
    "linear_probe": "linear probe",
    "full_finetune": "full fine-tuning",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    pretrain()
    rows = []
    for recipe, title in RECIPES.items():
        config = promptkit.load_config(HERE / f"{recipe}.yaml", args.overrides)
        result = promptkit.fit(config, overwrite=True)
        total = sum(p.numel() for p in result.predictor.model.parameters())
        rows.append(
            {
                "method": title,
                "recipe": recipe,
                "test_accuracy": result.test["accuracy"],
                "trained_parameters": result.trainable_parameters,
                "trained_percent": 100 * result.trainable_parameters / total,
            }
        )
    table = Table(
        "method",
        "test accuracy",
        "trained params",
        "% trained",
        title="Fashion-MNIST 5-9, 50 images per class, ViT pretrained on 0-4",
    )
    for row in rows:
        table.add_row(
            row["method"],
            f"{row['test_accuracy']:.3f}",
            f"{row['trained_parameters']:,}",
            f"{row['trained_percent']:.2f}",
        )
    Console().print(table)
    Path("runs/vpt-comparison.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
