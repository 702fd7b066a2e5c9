"""The ``promptkit`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from promptkit import catalog
from promptkit.errors import PromptkitError
from promptkit.template import Segment, SegmentKind, Template

app = typer.Typer(
    help="Prompt learning for transformers: templates, soft prompts, verbalizers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
template_app = typer.Typer(help="Check and render templates.", no_args_is_help=True)
app.add_typer(template_app, name="template")
console = Console()
err_console = Console(stderr=True)

_STYLE = {
    SegmentKind.TEXT: "white",
    SegmentKind.INPUT: "cyan",
    SegmentKind.SOFT: "magenta",
    SegmentKind.MASK: "bold yellow",
}


def _fail(err: Exception) -> typer.Exit:
    err_console.print("error:", style="bold red", end=" ")
    err_console.print(str(err), markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)


@app.command()
def fit(
    config: Annotated[Path, typer.Argument(help="YAML run config")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a.b=value")] = None,
    output: Annotated[Path | None, typer.Option(help="run folder (default: output_dir)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's resume state")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in the folder")] = False,
) -> None:
    """Train a prompt as CONFIG says, then evaluate it on the test split."""
    from promptkit.config import load_config
    from promptkit.pipeline import fit as run_fit

    try:
        cfg = load_config(config, [*(set_ or []), *([f"output_dir={output}"] if output else [])])
        result = run_fit(cfg, resume=resume, overwrite=overwrite)
    except PromptkitError as err:
        raise _fail(err) from None
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: progress saved in {cfg.output_dir}/resume; continue with "
            f"`promptkit fit {config} --resume`"
        )
        raise typer.Exit(130) from None
    console.print(f"run saved in [bold]{result.run_dir}[/]")
    console.print(
        f"trainable parameters: {result.trainable_parameters:,} "
        f"(saved: {result.saved_parameters:,})"
    )
    console.print(f"best validation: {json.dumps(result.validation)}")
    if result.test is not None:
        console.print(f"test: {json.dumps(result.test)}")


@app.command("eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run folder")],
    data: Annotated[
        str,
        typer.Option(
            help="labelled data: a file (text), a folder or split "
            "(images, read as in the run's config)"
        ),
    ],
    label_column: Annotated[str | None, typer.Option(help="default: the run's")] = None,
) -> None:
    """Score a trained prompt on labelled data: accuracy and macro-F1, or entity-level
    precision, recall and F1 for a tagger."""
    from promptkit.data import Split, label_indices
    from promptkit.pipeline import evaluate_split
    from promptkit.predictor import load

    try:
        predictor = load(run_dir)
        modality, data_config = _run_data(run_dir)
        if label_column:
            data_config = data_config.model_copy(update={"label_column": label_column})
        rows, column = modality.read_labelled(data_config, data)
        model = predictor.model
        labels = label_indices(rows, model.classes, model.task, column, data_config.label_map)
        split = Split(model.examples(rows), labels)
        metrics = evaluate_split(model, split, progress=True)
    except PromptkitError as err:
        raise _fail(err) from None
    console.print(json.dumps(metrics))


def _run_data(run_dir: Path) -> tuple:
    """The modality of a run and its data config (as saved in its config.yaml)."""
    from promptkit.modalities import modality_of
    from promptkit.run_folder import RunFolder

    run = RunFolder(run_dir)
    modality = modality_of(run.read_recipe()["recipe"])
    return modality, modality.data_schema().model_validate(run.read_config().get("data", {}))


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a run folder")],
    input: Annotated[
        str,
        typer.Option(
            "--input", help="a data file; for images also an image file or a folder of them"
        ),
    ],
    output: Annotated[Path, typer.Option("--output", help="jsonl to write")],
) -> None:
    """Label each example of INPUT; write one JSON line per example with label and scores."""
    from promptkit.predictor import load

    try:
        predictor = load(run_dir)
        modality, _ = _run_data(run_dir)
        rows = modality.read_inputs(input)
        probs = predictor.predict_proba(rows)
    except PromptkitError as err:
        raise _fail(err) from None
    with open(output, "w") as f:
        for row, p in zip(rows, probs, strict=True):
            f.write(json.dumps({**row, "prediction": _best(p), "scores": p}) + "\n")
    console.print(f"{len(rows)} predictions written to {output}")


def _best(scores: dict[str, float] | list[dict[str, float]]) -> str | list[str]:
    """The top label (of each word, for a tagger)."""
    if isinstance(scores, list):
        return [max(word, key=word.get) for word in scores]
    return max(scores, key=scores.get)


@app.command("catalog")
def list_catalog() -> None:
    """List the catalog: templates, verbalizers and vision recipes (methods: see `methods`)."""
    for kind in ("templates", "verbalizers", "vision"):
        table = Table(title=kind, show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, entry in catalog.entries(kind).items():
            table.add_row(name, entry.get("description", ""))
        console.print(table)


@app.command("methods")
def list_methods() -> None:
    """List the method presets (start a config with `preset: NAME`): what trains, and where
    the prompts go."""
    from promptkit.modalities import MODALITIES

    table = Table("preset", "modality", "trains", "prompts", "method")
    for modality in MODALITIES.values():
        for name, entry in catalog.entries(modality.presets).items():
            method = entry["description"].split(" - ")[0]
            table.add_row(name, modality.name, entry["trains"], entry["prompts"], method)
    console.print(table)


@template_app.command("check")
def template_check(
    template: Annotated[str, typer.Argument(help="template text or catalog name")],
) -> None:
    """Compile TEMPLATE and show its pieces: anchors, inputs, soft slots, mask."""
    try:
        compiled = catalog.template(template)
    except PromptkitError as err:
        raise _fail(err) from None
    table = Table("piece", "kind", "detail")
    for seg in compiled.segments():
        if seg.kind is not SegmentKind.TEXT or seg.text.strip():
            table.add_row(*_describe(seg, compiled))
    console.print(table)
    console.print(
        f"ok: {len(compiled.inputs)} input slot(s), {compiled.n_slots} soft slot(s), "
        f"{'a' if compiled.has_mask else 'no'} [MASK]"
    )


@template_app.command("render")
def template_render(
    template: Annotated[str, typer.Argument(help="template text or catalog name")],
    example: Annotated[str, typer.Option(help="the example as JSON")],
    model: Annotated[str | None, typer.Option(help="tokenize with this model's tokenizer")] = None,
    max_length: Annotated[int, typer.Option()] = 256,
) -> None:
    """Render TEMPLATE over an example; with --model, show the tokens it encodes to."""
    from promptkit.data import as_examples

    try:
        compiled = catalog.template(template)
        values = json.loads(example)
        segments = compiled.render(as_examples([values], {}, compiled.inputs)[0])
        if model is None:
            console.print("".join(_show(s, compiled) for s in segments), highlight=False)
            return
        _show_tokens(compiled, values, model, max_length)
    except json.JSONDecodeError as err:
        raise _fail(PromptkitError(f"--example is not valid JSON: {err}")) from None
    except PromptkitError as err:
        raise _fail(err) from None


def _describe(seg: Segment, compiled: Template) -> tuple[str, str, str]:
    kind = f"[{_STYLE[seg.kind]}]{seg.kind}[/]"
    if seg.kind is SegmentKind.SOFT:
        slot = compiled.slots[seg.slot]
        return (
            f"[{slot.name}]",
            kind,
            f"trainable vector #{seg.slot}, init: {slot.init or 'default'}",
        )
    if seg.kind is SegmentKind.INPUT:
        return f"<{seg.name}>", kind, "input, truncated if too long"
    if seg.kind is SegmentKind.MASK:
        return "[MASK]", kind, "the answer is read here"
    return repr(seg.text), kind, "frozen anchor"


def _show(seg: Segment, compiled: Template) -> str:
    if seg.kind is SegmentKind.INPUT:
        return f"[{_STYLE[seg.kind]}]{seg.text}[/]"
    if seg.kind is SegmentKind.SOFT:
        return f"[{_STYLE[seg.kind]}]<{compiled.slots[seg.slot].name}>[/]"
    if seg.kind is SegmentKind.MASK:
        return f"[{_STYLE[seg.kind]}]<MASK>[/]"
    return seg.text.replace("[", "\\[")


def _show_tokens(compiled: Template, values: dict, model: str, max_length: int) -> None:
    from transformers import AutoTokenizer

    from promptkit.backbone import detect_kind
    from promptkit.data import as_examples
    from promptkit.encoding import PromptTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    encoder = PromptTokenizer(compiled, tokenizer, max_length, detect_kind(model) == "causal_lm")
    encoded = encoder(as_examples([values], {}, compiled.inputs))[0]
    table = Table("#", "token", "id", "kind")
    for pos, (tid, slot, word) in enumerate(
        zip(encoded.input_ids, encoded.slot_ids, encoded.word_ids, strict=True)
    ):
        kind = (
            f"soft [{compiled.slots[slot].name}]"
            if slot >= 0
            else f"input word {word}"
            if word >= 0
            else "template"
        )
        if pos == encoded.mask_position:
            kind += " <- answer read here"
        token = "" if slot >= 0 else tokenizer.convert_ids_to_tokens(tid)
        table.add_row(str(pos), token, "" if slot >= 0 else str(tid), kind)
    console.print(table)
