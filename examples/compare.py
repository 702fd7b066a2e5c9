"""Train one task with several methods and tabulate the test metric against the share of
trained parameters. Used by the NER and sentiment (CLS head) examples."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from assets import ensure
from rich.console import Console
from rich.table import Table

import promptkit
from promptkit.core.config import merged
from promptkit.runs.config import validate_config


def main(
    description: str,
    base_config: Path,
    methods: dict[str, dict[str, Any]],
    metric: str,
    title: str,
    assets: list[str],
) -> None:
    """The command line of a comparison example: ``--set key=value`` for every run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    ensure(assets)
    compare(base_config, methods, metric, title, args.overrides)


def compare(
    base_config: Path,
    methods: dict[str, dict[str, Any]],
    metric: str,
    title: str,
    overrides: list[str] = (),
) -> list[dict[str, Any]]:
    """Fit ``base_config`` once per method (a preset plus its own overrides), each in
    ``<output_dir>/<method>``; print a table and write ``<output_dir>/comparison.json``.

    Args:
        base_config: a run config without a method: backbone, head, data, trainer.
        methods: display name -> config keys on top of the base (e.g. ``{"preset": ...}``).
        metric: the test metric to report.
        title: the table's title.
        overrides: ``--set`` style ``key=value`` applied to every run.
    """
    console = Console()
    base = yaml.safe_load(base_config.read_text())
    out = Path(base["output_dir"])
    rows = []
    for name, method in methods.items():
        data = merged(base, {**method, "output_dir": str(out / method["preset"])})
        for item in overrides:
            key, _, value = item.partition("=")
            data = merged(data, _nested(key.split("."), yaml.safe_load(value)))
        config = validate_config(data, f"{base_config} + {name}")
        console.rule(f"{name}  ({method['preset']})")
        result = promptkit.fit(config, overwrite=True)
        backbone_size = sum(p.numel() for p in result.predictor.model.lm.parameters())
        rows.append(
            {
                "method": name,
                "preset": method["preset"],
                f"test_{metric}": result.test[metric],
                "validation": result.validation,
                "trained_parameters": result.trainable_parameters,
                "trained_percent": 100 * result.trainable_parameters / backbone_size,
                "saved_parameters": result.saved_parameters,
            }
        )
    table = Table("method", f"test {metric}", "trained params", "% of backbone", title=title)
    for row in rows:
        table.add_row(
            row["method"],
            f"{row[f'test_{metric}']:.3f}",
            f"{row['trained_parameters']:,}",
            f"{row['trained_percent']:.2f}",
        )
    console.print(table)
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    return rows


def _nested(keys: list[str], value: Any) -> dict[str, Any]:
    return {keys[0]: _nested(keys[1:], value) if len(keys) > 1 else value}
