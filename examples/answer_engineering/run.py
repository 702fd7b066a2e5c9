"""Answer engineering and multi-prompt learning on MR with SmolLM2-135M, in one table.

From the repository root:  python examples/answer_engineering/run.py [--set key=value ...]

Every row starts from zero_shot.yaml (a hard cloze template, nothing trained) and is scored on
the same 1,000 test sentences; searches, demonstrations and training see 32 sentences per class,
and weights are fitted on 32 validation sentences per class:

  zero-shot                  the hard template and the hand-written label words
  + calibration              contextual calibration on content-free inputs
  + demonstrations           and one labelled training sentence per class before each query
  ensemble of 3 templates    three calibrated hard templates, weights fitted on validation
  searched verbalizer        label words found on the training sentences, calibrated
  knowledgeable verbalizer   thirty words per class refined and calibrated by their prior;
                             the word weights trained (KPT)
  soft verbalizer            WARP: soft tokens around the input, class vectors trained
  AutoPrompt template        trigger words found by gradient search, then used as a hard
                             template, calibrated
  P-tuning                   two soft tokens from an LSTM encoder, trained

The table (accuracy, trained and saved parameters) is printed and written to
runs/answer-engineering/table.json; each row's run folder is beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from assets import ensure  # noqa: E402

import promptkit  # noqa: E402
from promptkit.core.config import merged  # noqa: E402
from promptkit.modalities import modality_of  # noqa: E402
from promptkit.runs.config import validate_config  # noqa: E402
from promptkit.text.autoprompt import autoprompt  # noqa: E402
from promptkit.text.label_search import search_label_words  # noqa: E402

CALIBRATED = {"calibration": {}}
TEMPLATES = ["sentiment_cloze", "sentiment_review", "sentiment_overall"]
TRIGGERS = "<x> [P1][P2][P3] [MASK]."  # AutoPrompt's slots, between the input and the answer


class Rows:
    """Runs every row on one loaded backbone and keeps the table."""

    def __init__(self, overrides: list[str]) -> None:
        self.base = promptkit.load_config(HERE / "zero_shot.yaml", overrides).model_dump(
            mode="json", exclude_unset=True
        )
        self.out = Path(self.base["output_dir"]).parent
        self.backbone = promptkit.load_backbone(self.base["backbone"]["name"])
        self.console = Console()
        self.rows: list[dict[str, Any]] = []

    def config(self, name: str, **keys: Any) -> Any:
        """The base config with ``keys`` on top, writing to the row's own folder."""
        return validate_config(merged(self.base, {**keys, "output_dir": str(self.out / name)}))

    def fit(self, label: str, name: str, **keys: Any) -> Any:
        """Fit one row's config and add it to the table."""
        config = self.config(name, **keys)
        self.console.rule(f"{label}  (runs/{self.out.name}/{name})")
        start = time.perf_counter()
        result = promptkit.fit(config, backbone=self.backbone, overwrite=True)
        self.add(
            label,
            result.test["accuracy"],
            result.trainable_parameters,
            result.saved_parameters,
            time.perf_counter() - start,
            config.template,
        )
        return result

    def add(
        self, label: str, accuracy: float, trained: int, saved: int, seconds: float, template: str
    ) -> None:
        self.rows.append(
            {
                "method": label,
                "template": template,
                "test_accuracy": accuracy,
                "trained_parameters": trained,
                "saved_parameters": saved,
                "seconds": round(seconds, 1),
            }
        )
        self.console.print(f"{label}: test accuracy {accuracy:.3f}")

    def splits(self, **keys: Any) -> Any:
        """The prepared model and data of a config (for the searches)."""
        config = self.config("search", **keys)
        return modality_of(config.model_dump()).prepare(config, self.backbone)


def ensemble(rows: Rows, members: list[Path]) -> None:
    """Three calibrated templates, weights fitted on the validation sentences."""
    start = time.perf_counter()
    prepared = rows.splits()
    validation, test = prepared.splits.validation, prepared.splits.test
    classes = prepared.model.classes
    members_ = promptkit.RunEnsemble.of(members)
    members_.fit_weights(_texts(validation), [classes[y] for y in validation.labels])
    members_.save(_fresh(rows.out / "ensemble"))
    predicted = members_.predict(_texts(test))
    accuracy = sum(p == classes[y] for p, y in zip(predicted, test.labels, strict=True)) / len(test)
    saved = 3 * len(classes) + len(members)  # each member's calibration, and the weights
    rows.add(
        "ensemble of 3 templates",
        accuracy,
        len(members),
        saved,
        time.perf_counter() - start,
        " | ".join(TEMPLATES),
    )


def searched_verbalizer(rows: Rows) -> dict[str, list[str]]:
    """Label words searched on the training sentences with the zero-shot template."""
    prepared = rows.splits()
    train = prepared.splits.train
    words = search_label_words(prepared.model, train.examples, train.labels, per_class=3)
    rows.console.print(f"searched label words: {words}")
    return words


def autoprompt_template(rows: Rows) -> str:
    """AutoPrompt's trigger words for the template's three slots, as a hard template."""
    prepared = rows.splits(template=TRIGGERS, trainable=["prompts"], trainer={"epochs": 1})
    train = prepared.splits.train
    found = autoprompt(prepared.model, train.examples, train.labels, iterations=18, candidates=8)
    rows.console.print(
        f"AutoPrompt: {found.template} (loss {found.losses[0]:.3f} -> {found.losses[-1]:.3f})"
    )
    return found.template


def _texts(split: Any) -> list[str]:
    return [example["x"] for example in split.examples]


def _fresh(folder: Path) -> Path:
    """An empty folder for the saved ensemble (its earlier copy from this example goes)."""
    if (folder / "ensemble.json").is_file():
        (folder / "ensemble.json").unlink()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    ensure(["smollm2", "mr"])
    started = time.perf_counter()
    rows = Rows(args.overrides)
    steps: list[Callable[[], Any]] = [
        lambda: rows.fit("zero-shot", "zero_shot"),
        lambda: rows.fit("+ calibration", "calibrated", **CALIBRATED),
        lambda: rows.fit(
            "+ demonstrations (1 per class)",
            "demonstrations",
            demonstrations={"per_class": 1},
            **CALIBRATED,
        ),
        lambda: [
            rows.fit(f"  member: {t}", f"template_{t}", template=t, **CALIBRATED)
            for t in TEMPLATES[1:]
        ],
        lambda: ensemble(
            rows, [rows.out / "calibrated"] + [rows.out / f"template_{t}" for t in TEMPLATES[1:]]
        ),
        lambda: rows.fit(
            "searched verbalizer (3 words per class)",
            "searched_verbalizer",
            head={"verbalizer": searched_verbalizer(rows)},
            **CALIBRATED,
        ),
        lambda: rows.fit(
            "knowledgeable verbalizer (KPT)",
            "kpt",
            preset="kpt",
            head={"type": "knowledgeable", "verbalizer": "sentiment_knowledgeable"},
            trainable=["head"],
            trainer={"epochs": 3},
        ),
        lambda: rows.fit(
            "soft verbalizer (WARP)",
            "warp",
            preset="warp",
            template="[P*4] <x> It was [P*4] [MASK].",
            head={"type": "soft_verbalizer", "verbalizer": "sentiment"},
            trainable=["prompts", "head"],
            trainer={"epochs": 6, "lr": {"prompts": 0.003, "head": 0.01}},
        ),
        lambda: rows.fit(
            "AutoPrompt template", "autoprompt", template=autoprompt_template(rows), **CALIBRATED
        ),
        lambda: rows.fit(
            "P-tuning (2 soft tokens, LSTM encoder)",
            "ptuning",
            template="<x> It was [P1][P2] [MASK].",
            prompts={"encoder": "lstm"},
            trainable=["prompts"],
            trainer={"epochs": 10, "lr": {"prompts": 0.003}, "warmup_ratio": 0.1},
        ),
    ]
    for step in steps:
        step()
    table = Table(
        "method",
        "test accuracy",
        "trained params",
        "saved params",
        title="MR sentiment, SmolLM2-135M, 1,000 test sentences",
    )
    shown = [r for r in rows.rows if not r["method"].startswith("  member")]
    for row in shown:
        table.add_row(
            row["method"],
            f"{row['test_accuracy']:.3f}",
            f"{row['trained_parameters']:,}",
            f"{row['saved_parameters']:,}",
        )
    rows.console.print(table)
    minutes = (time.perf_counter() - started) / 60
    rows.console.print(f"{minutes:.1f} minutes in all")
    report = {"minutes": round(minutes, 1), "rows": rows.rows}
    (rows.out / "table.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
