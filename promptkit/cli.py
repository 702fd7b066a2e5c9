"""The ``promptkit`` command line.

A user's mistake is a one-line error and a non-zero exit, never a traceback (``--debug``
shows one). Whatever comes from the user (templates, data, paths) is printed as plain text,
never read as terminal markup. Heavy libraries load only in the commands that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from promptkit import catalog
from promptkit.errors import PromptkitError, TrainingInterrupted
from promptkit.text.template import (
    Segment,
    SegmentKind,
    Template,
    check_input_slot,
    resolve_template,
)

app = typer.Typer(
    help="Prompt learning for transformers: templates, soft prompts, verbalizers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
template_app = typer.Typer(help="Check and render templates.", no_args_is_help=True)
app.add_typer(template_app, name="template")
console = Console()
err_console = Console(stderr=True)
_options = {"debug": False}
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads torch computes with (default: torch's own, which OMP_NUM_THREADS sets)",
    ),
]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_STYLE = {
    SegmentKind.TEXT: "white",
    SegmentKind.INPUT: "cyan",
    SegmentKind.SOFT: "magenta",
    SegmentKind.MASK: "bold yellow",
}


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of an error")] = False,
) -> None:
    """Prompt learning for transformers: templates, soft prompts, verbalizers."""
    _options["debug"] = debug


@contextmanager
def _reported(resume_hint: str = "", run_dir: Path | None = None) -> Iterator[None]:
    """Errors as one message and an exit code: 2 for a mistake in the input, 1 for a
    failure of promptkit itself, 128 + the signal for an interrupt (``run_dir``: the run a
    fit writes, None if it is not known yet)."""
    try:
        yield
    except typer.Exit:
        raise
    except PromptkitError as err:
        if _options["debug"]:
            raise
        _say("error:", str(err))
        raise typer.Exit(2) from None
    except TrainingInterrupted as stop:
        _say("stopped:", f"at {stop.where}; the run can continue with {resume_hint} --resume")
        raise typer.Exit(128 + stop.signal) from None
    except KeyboardInterrupt:
        _say("interrupted:", _what_is_kept(resume_hint, run_dir))
        raise typer.Exit(128 + signal.SIGINT) from None
    except Exception as err:
        if _options["debug"]:
            raise
        _say(
            "internal error:",
            f"{type(err).__name__}: {err}. This is a promptkit bug, not your input: rerun with "
            "`promptkit --debug ...` to see where it happened, and report it.",
        )
        raise typer.Exit(1) from None


def _what_is_kept(resume_hint: str, run_dir: Path | None) -> str:
    """What an interrupt outside training leaves (before it starts, or in the test)."""
    if run_dir is None or not (run_dir / "resume" / "state.pt").is_file():
        return "nothing was saved yet."
    return f"the run keeps its last checkpoint; continue it with {resume_hint} --resume"


def _use_threads(threads: int | None) -> None:
    """Have torch compute with ``threads`` CPU threads (None: leave torch's own choice); more
    than the machine's CPUs is a mistake (torch would start them all, or crash)."""
    if threads is None:
        return
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise PromptkitError(
            f"--threads {threads}: this machine has {cpus} CPU(s); give at most {cpus}."
        )
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # fixed once inter-op work has started
        torch.set_num_interop_threads(threads)


def _say(label: str, message: str) -> None:
    err_console.print(label, style="bold red", end=" ")
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


@app.command()
def fit(
    config: Annotated[Path, typer.Argument(help="YAML run config")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a.b=value")] = None,
    output: Annotated[Path | None, typer.Option(help="run folder (default: output_dir)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's resume state")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="replace an earlier promptkit run in the folder")
    ] = False,
    threads: Threads = None,
) -> None:
    """Train a prompt as CONFIG says, then evaluate it on the test split. Ctrl-C stops at the
    next step and `--resume` continues exactly there; progress is also in the run's
    train.log."""
    overrides = [*(set_ or []), *([f"output_dir={output}"] if output else [])]
    hint = " ".join(["promptkit fit", str(config), *(f"--set {o}" for o in overrides)])
    with _reported(hint):
        from promptkit.runs.config import load_config

        loaded = load_config(config, overrides)  # config errors come before heavy imports
    with _reported(hint, Path(loaded.output_dir)):
        _use_threads(threads)
        from promptkit.runs.fitting import fit as run_fit

        result = run_fit(loaded, resume=resume, overwrite=overwrite)
    console.print(f"run saved in [bold]{escape(str(result.run_dir))}[/]")
    console.print(
        f"trainable parameters: {result.trainable_parameters:,} "
        f"(saved: {result.saved_parameters:,})"
    )
    console.print(f"best validation: {json.dumps(result.validation)}", markup=False, soft_wrap=True)
    if result.test is not None:
        console.print(f"test: {json.dumps(result.test)}", markup=False, soft_wrap=True)


@app.command()
def check(
    config: Annotated[Path, typer.Argument(help="YAML run config")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a.b=value")] = None,
) -> None:
    """Check CONFIG without training: the config, the data (columns, classes per split,
    invalid rows), the template on the first examples, the label words' tokens, and the
    backbone's size. Exit code 0 when all is well, 2 with the problems listed."""
    with _reported():
        from promptkit.runs.check import check_config

        report = check_config(config, set_ or [])
    for section, lines in report.sections.items():
        console.print(Text(section, style="bold"))
        for line in lines:
            console.print(Text(f"  {_visible(line)}"), soft_wrap=True)
    if report.rendered:
        console.print(Text("template, on the first training examples", style="bold"))
        for segments in report.rendered:
            shown = Text.assemble("  ", *(_show(s, report.template) for s in segments))
            console.print(shown, soft_wrap=True)
    if report.ok:
        console.print(Text("ok: the config is ready to run", style="bold green"))
        return
    for problem in report.problems:
        _say("problem:", problem)
    raise typer.Exit(2)


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
    threads: Threads = None,
) -> None:
    """Score a trained prompt (or a saved ensemble) on labelled data: accuracy and macro-F1,
    entity-level precision, recall and F1 for a tagger, or BLEU, chrF, ROUGE-L and the loss
    for a generator (examples with the same input, or a list of texts as the label, are one
    input with several references; empty answers are counted on stderr)."""
    with _reported():
        _use_threads(threads)
        from promptkit.core.data import Split, label_indices, mapped_labels
        from promptkit.core.run_folder import is_ensemble
        from promptkit.runs.fitting import evaluate_split
        from promptkit.serving.predictor import load_run
        from promptkit.serving.run_ensemble import RunEnsemble
        from promptkit.tasks import CLASSIFICATION

        if is_ensemble(run_dir):
            members = RunEnsemble.load(run_dir)
            first = next(iter(members.members.values()))
            columns = members.data_columns()
            rows, column, data_config = _labelled(Path(first), data, label_column, columns)
            names = mapped_labels(rows, CLASSIFICATION, column, data_config.label_map)
            metrics = members.evaluate(rows, names)
        else:
            predictor = load_run(run_dir)
            model = predictor.model
            columns = model.data_columns()
            rows, column, data_config = _labelled(run_dir, data, label_column, columns, model.task)
            labels = label_indices(rows, model.classes, model.task, column, data_config.label_map)
            with _empty_answers_said():
                metrics = evaluate_split(model, Split(model.examples(rows), labels), progress=True)
    console.print(json.dumps(metrics), markup=False, soft_wrap=True)


def _empty_answers_said() -> AbstractContextManager[None]:
    """Within the block, a generator's count of empty answers is a line on stderr."""
    from promptkit.errors import EmptyAnswersWarning, diverted

    return diverted(EmptyAnswersWarning, lambda line: _say("warning:", line))


def _labelled(
    run_dir: Path,
    data: str,
    label_column: str | None,
    columns: list[str],
    task: Any = None,
) -> tuple[list[dict[str, Any]], str, Any]:
    """Labelled rows read as the run reads data (its label column, label_map, invalid rows,
    a generator's target template and lists of references), with the input ``columns``;
    the label column and the run's data settings. ``task``: the run's (default:
    classification)."""
    from promptkit.core.data import validate_rows
    from promptkit.tasks import CLASSIFICATION
    from promptkit.text.data import one_row_per_answer, with_targets
    from promptkit.text.template import Template

    task = task or CLASSIFICATION

    modality, data_config, recipe = _run_data(run_dir)
    if label_column:
        data_config = data_config.model_copy(update={"label_column": label_column})
    rows, column = modality.read_labelled(data_config, data)
    target = recipe.get("head", {}).get("target")
    if target:
        rows = with_targets(rows, data, Template(target, "head.target"), column)
    rows = validate_rows(rows, data, columns, column, data_config.invalid, task.empty_label)
    return one_row_per_answer(rows, data, task, column), column, data_config


def _run_data(run_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The modality of a run, its data config (as saved in its config.yaml) and recipe."""
    from promptkit.core.config import validate
    from promptkit.core.run_folder import RunFolder
    from promptkit.errors import ConfigError
    from promptkit.modalities import modality_of

    run = RunFolder(run_dir)
    recipe = run.read_recipe()["recipe"]
    modality = modality_of(recipe)
    if not run.file(run.CONFIG).is_file():
        raise ConfigError(
            f"{run.file(run.CONFIG)} is missing: eval reads the run's data settings (label "
            "column, label_map) from it. Put it back, or train the run again."
        )
    saved = run.read_config().get("data", {})
    return modality, validate(modality.data_schema(), saved, f"{run_dir}/config.yaml"), recipe


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
    overwrite: Annotated[bool, typer.Option(help="replace OUTPUT if it exists")] = False,
    decoding: Annotated[
        list[str] | None,
        typer.Option("--decoding", help="generators: a decoding option, e.g. num_beams=4"),
    ] = None,
    threads: Threads = None,
) -> None:
    """Label each example of INPUT, or write its answer (a generator: empty answers are
    counted on stderr, with their cause); one JSON line per example: its fields, the
    prediction, and the class scores. RUN_DIR may be a saved ensemble."""
    with _reported():
        _use_threads(threads)
        from promptkit.core.run_folder import RunFolder, is_ensemble
        from promptkit.modalities import modality_of
        from promptkit.serving.predictor import load_run
        from promptkit.serving.run_ensemble import RunEnsemble
        from promptkit.tasks import CLASSIFICATION

        _check_output(output, Path(input), run_dir, overwrite)
        if is_ensemble(run_dir):
            predictor = RunEnsemble.load(run_dir)
            task, modality = CLASSIFICATION, modality_of({})
        else:
            predictor = load_run(run_dir)
            task = predictor.model.task
            modality = modality_of(RunFolder(run_dir).read_recipe()["recipe"])
        if decoding and task.has_classes:
            raise PromptkitError(
                f"--decoding sets how a generator writes text, but {run_dir} labels classes: "
                "drop --decoding."
            )
        rows = modality.read_inputs(input)
        _no_output_columns(rows, ("prediction", "scores") if task.has_classes else ("prediction",))
        if task.has_classes:
            shown = {} if is_ensemble(run_dir) else {"progress": True}  # a run's scoring
            scored = predictor.predict_proba(rows, **shown)
            results = [{"prediction": task.chosen(p), "scores": p} for p in scored]
        else:
            with _empty_answers_said():
                texts = predictor.generate(rows, progress=True, **_key_values(decoding or []))
            results = [{"prediction": text} for text in texts]
        lines = [
            json.dumps({**row, **result}, default=str) + "\n"
            for row, result in zip(rows, results, strict=True)
        ]
        _write(output, "".join(lines))
    console.print(f"{len(lines)} predictions written to {escape(str(output))}")


@app.command("ensemble")
def ensemble(
    runs: Annotated[list[str], typer.Argument(help="run folders, or NAME=FOLDER to name one")],
    output: Annotated[Path, typer.Option("--output", help="a new folder for the ensemble")],
    combine: Annotated[
        str, typer.Option(help="mean (log-probability), weighted (learned on --data) or vote")
    ] = "mean",
    data: Annotated[
        str | None, typer.Option(help="labelled data: learns the weights, reports accuracy")
    ] = None,
) -> None:
    """Combine trained runs of one task into an ensemble saved in OUTPUT, which `eval`,
    `predict` and `promptkit.load` take like a run."""
    with _reported():
        from promptkit.core.data import mapped_labels
        from promptkit.serving.run_ensemble import COMBINES, RunEnsemble, check_folder
        from promptkit.tasks import CLASSIFICATION

        if combine not in COMBINES:
            raise PromptkitError(f"--combine is one of {', '.join(COMBINES)}, not {combine!r}.")
        if combine == "weighted" and data is None:
            raise PromptkitError(
                "--combine weighted learns the members' weights on labelled data: give --data."
            )
        check_folder(output)
        named = _named_runs(runs)
        members = RunEnsemble.of(named, "mean" if combine == "weighted" else combine)
        scores = None
        if data is not None:
            first = Path(next(iter(named.values())))
            rows, column, data_config = _labelled(first, data, None, members.data_columns())
            names = mapped_labels(rows, CLASSIFICATION, column, data_config.label_map)
            if combine == "weighted":
                members.fit_weights(rows, names)
            scores = members.evaluate(rows, names)
        members.save(output)
    table = Table("member", "weight", *(["accuracy on --data"] if scores else []))
    for name in [*members.host.runs, "ensemble"]:
        weight = "" if name == "ensemble" else f"{members.weights[name]:.3f}"
        accuracy = [f"{scores[name]['accuracy']:.3f}"] if scores else []
        table.add_row(Text(name), weight, *accuracy)
    console.print(table)
    console.print(Text(f"ensemble ({members.combine}) saved to {output}"))


@app.command()
def serve(
    runs: Annotated[list[str], typer.Argument(help="run folders, or NAME=FOLDER to name a run")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="port to listen on (0: a free one)", min=0, max=65535)
    ] = 8000,
    device: Annotated[str, typer.Option(help="where the backbone runs, e.g. cuda")] = "cpu",
    max_batch: Annotated[int, typer.Option(help="most rows in one shared batch")] = 32,
    max_wait_ms: Annotated[
        float, typer.Option(help="longest a batch waits for more requests")
    ] = 5.0,
    max_inputs: Annotated[int, typer.Option(help="most inputs in one request")] = 64,
    max_chars: Annotated[int, typer.Option(help="longest text of one input")] = 10_000,
    threads: Threads = None,
) -> None:
    """Serve trained runs over HTTP, all on one backbone (docs at /docs once started)."""
    with _reported():
        _use_threads(threads)
        from promptkit.serving.host import host_runs
        from promptkit.serving.server import Limits
        from promptkit.serving.server import serve as run_server

        limits = Limits(max_batch, max_wait_ms, max_inputs, max_chars)
        named = _named_runs(runs)
        _warn_unfinished(named.values())
        port = _listenable(host, port)  # before minutes of loading
        hosted = host_runs(named, device=device)
        err_console.print(f"serving {', '.join(hosted.runs)} on http://{host}:{port}")
    run_server(hosted, host, port, limits)


def _named_runs(runs: list[str]) -> dict[str, str]:
    """Task name -> run folder, from FOLDER (named after it) or NAME=FOLDER arguments."""
    named: dict[str, str] = {}
    for run in runs:
        name, _, folder = run.partition("=") if "=" in run else ("", "", run)
        name = name or Path(folder).resolve().name
        if name in named:
            raise PromptkitError(
                f"two runs are named {name!r}: name them apart, e.g. {name}2={folder}."
            )
        named[name] = folder
    return named


def _warn_unfinished(folders: Iterable[str]) -> None:
    """A run whose marker says it is training is served with a warning: its prompt is that of
    its best epoch so far."""
    from promptkit.core.run_folder import RunFolder

    for folder in folders:
        if RunFolder(folder).status() == "training":
            _say(
                "warning",
                f"{folder} has not finished training (a fit is writing it, or stopped before "
                "the end): serving its best epoch so far. Finish it with `promptkit fit CONFIG "
                "--resume`.",
            )


def _listenable(host: str, port: int) -> int:
    """The port the server can listen on at ``host`` (``port``, or a free one for 0); the
    socket that checked it is closed at once."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
            return probe.getsockname()[1]
    except OSError as err:
        raise PromptkitError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): choose another --port "
            "or --host, or stop what uses it."
        ) from None


def _check_output(output: Path, source: Path, run_dir: Path, overwrite: bool) -> None:
    """Predictions go to a new file (or one that --overwrite replaces) that can be written:
    never the input, nor a file of the run."""
    from promptkit.core.run_folder import RunFolder, check_writable

    if output.exists() and not overwrite:
        raise PromptkitError(f"{output} exists: choose another --output, or add --overwrite.")
    if source.resolve() == output.resolve():
        raise PromptkitError("--output is the --input file: write the predictions elsewhere.")
    if RunFolder(run_dir).owns(output):
        raise PromptkitError(
            f"--output {output} is a file of the run {run_dir}: write the predictions elsewhere."
        )
    check_writable(output, "--output", folder=False)


def _no_output_columns(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """The input must not have the columns predict adds (they would be replaced)."""
    clash = sorted({c for row in rows for c in columns if c in row})
    if clash:
        from promptkit.errors import DataError

        raise DataError(
            f"the input has column(s) {clash}, which predict writes into each line: rename "
            "them, or leave them out of --input."
        )


def _write(output: Path, text: str) -> None:
    from promptkit.core.run_folder import atomic_text

    try:
        atomic_text(output, text)
    except OSError as err:
        raise PromptkitError(
            f"--output {output} cannot be written ({err.strerror or err}): choose another."
        ) from None


def _key_values(items: list[str]) -> dict[str, Any]:
    """``key=value`` options, values read as YAML."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PromptkitError(f"--decoding {item!r}: write KEY=VALUE, e.g. num_beams=4")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise PromptkitError(f"--decoding {item!r}: the value is not valid YAML") from err
    return options


@app.command("catalog")
def list_catalog() -> None:
    """List the catalog: templates, verbalizers and vision recipes (methods: see `methods`)."""
    for kind in ("templates", "verbalizers", "vision"):
        table = Table(title=kind, show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, entry in catalog.entries(kind).items():
            table.add_row(Text(name), Text(entry.get("description", "")))
        console.print(table)


@app.command("list")
def list_registered(
    kind: Annotated[
        str | None,
        typer.Argument(help="placements, heads, tasks, modalities or quantizations (all if none)"),
    ] = None,
) -> None:
    """List what can be named in a config: placements (prompts.placement), heads (head.type),
    task kinds, modalities and quantization methods (backbone.quantization.method)."""
    with _reported():
        from promptkit.backbone.quantization import QUANTIZATIONS
        from promptkit.errors import ConfigError
        from promptkit.modalities import MODALITIES
        from promptkit.tasks import TASKS
        from promptkit.text.heads import HEADS
        from promptkit.text.placements import PLACEMENTS

        registries = {
            "placements": PLACEMENTS,
            "heads": HEADS,
            "tasks": TASKS,
            "modalities": MODALITIES,
            "quantizations": QUANTIZATIONS,
        }
        if kind is not None and kind not in registries:
            raise ConfigError(f"there is no list {kind!r}; choose one of {', '.join(registries)}.")
        for name, registry in registries.items():
            if kind in (None, name):
                table = Table("name", "what it is", title=name)
                for entry, summary in registry.described().items():
                    table.add_row(Text(entry, style="bold"), Text(summary))
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
            cells = (name, modality.name, entry["trains"], entry["prompts"], method)
            table.add_row(*(Text(c) for c in cells))
    console.print(table)


@template_app.command("check")
def template_check(
    template: Annotated[str, typer.Argument(help="template text or catalog name")],
) -> None:
    """Compile TEMPLATE and show its pieces: anchors, inputs, soft slots, mask."""
    with _reported():
        compiled = resolve_template(template)
        check_input_slot(compiled, template)
    table = Table("piece", "kind", "detail")
    for seg in compiled.segments():
        if seg.kind is not SegmentKind.TEXT or seg.text.strip():
            table.add_row(*_describe(seg, compiled))
    console.print(table)
    console.print(
        f"ok: {len(compiled.inputs)} input slot(s), {compiled.n_slots} soft slot(s), "
        f"{'a' if compiled.has_mask else 'no'} [MASK]",
        markup=False,
    )


@template_app.command("search")
def template_search(
    config: Annotated[Path, typer.Argument(help="YAML run config with a verbalizer head")],
    candidate: Annotated[
        list[str] | None, typer.Option("--candidate", help="a template text or catalog name")
    ] = None,
    from_catalog: Annotated[
        bool,
        typer.Option("--catalog", help="also every catalog hard template with the same inputs"),
    ] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a.b=value")] = None,
    threads: Threads = None,
) -> None:
    """Score candidate hard templates zero-shot on CONFIG's validation data, best first."""
    with _reported():
        _use_threads(threads)
        from promptkit.runs.config import load_config
        from promptkit.runs.template_search import catalog_candidates, score_templates

        loaded = load_config(config, set_ or [])
        candidates = list(candidate or [])
        if from_catalog:
            candidates += [c for c in catalog_candidates(loaded) if c not in candidates]
        scores = score_templates(loaded, candidates, progress=True)
    table = Table("rank", "template", scores[0].metric, "metrics")
    for rank, score in enumerate(scores, 1):
        shown = ", ".join(f"{k} {v:.3f}" for k, v in score.metrics.items())
        table.add_row(str(rank), Text(score.template), f"{score.score:.3f}", shown)
    console.print(table)
    console.print(Text(f"best: {scores[0].template}"))


@template_app.command("autoprompt")
def template_autoprompt(
    config: Annotated[Path, typer.Argument(help="YAML run config whose soft slots are triggers")],
    iterations: Annotated[int, typer.Option(min=1, help="search steps, one slot each")] = 20,
    candidates: Annotated[int, typer.Option(min=1, help="words tried per step")] = 10,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a.b=value")] = None,
    threads: Threads = None,
) -> None:
    """Find a word for each soft slot of CONFIG's template on its training split (AutoPrompt)
    and print the hard template, and the template with soft slots started from the words."""
    with _reported():
        _use_threads(threads)
        from promptkit.modalities import modality_of
        from promptkit.runs.config import load_config
        from promptkit.text.autoprompt import autoprompt, check_config

        loaded = load_config(config, set_ or [])
        check_config(loaded)
        prepared = modality_of(loaded.model_dump()).prepare(loaded)
        train = prepared.splits.train
        found = autoprompt(
            prepared.model,
            train.examples,
            train.labels,
            iterations,
            candidates,
            loaded.trainer.batch_size,
            loaded.seed,
            progress=True,
        )
    console.print(Text(f"loss {found.losses[0]:.4f} -> {found.losses[-1]:.4f}"))
    console.print(Text(f"hard template:   {found.template}"))
    console.print(Text(f"seeded template: {found.seeded}"))


@template_app.command("render")
def template_render(
    template: Annotated[str, typer.Argument(help="template text or catalog name")],
    example: Annotated[str, typer.Option(help="the example as JSON")],
    model: Annotated[str | None, typer.Option(help="tokenize with this model's tokenizer")] = None,
    max_length: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Render TEMPLATE over an example; with --model, show the tokens it encodes to."""
    with _reported():
        from promptkit.core.data import as_examples

        compiled = resolve_template(template)
        values = _example(example)
        segments = compiled.render(as_examples([values], {}, compiled.inputs)[0])
        if model is None:
            console.print(Text.assemble(*(_show(s, compiled) for s in segments)), soft_wrap=True)
            return
        _show_tokens(compiled, values, model, max_length)


def _example(text: str) -> dict[str, Any]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise PromptkitError(f"--example is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise PromptkitError('--example is a JSON object of fields, e.g. {"x": "a fine film"}.')
    return values


def _describe(seg: Segment, compiled: Template) -> tuple[Text, Text, Text]:
    kind = Text(str(seg.kind), style=_STYLE[seg.kind])
    if seg.kind is SegmentKind.SOFT:
        slot = compiled.slots[seg.slot]
        detail = f"trainable vector #{seg.slot}, init: {slot.init or 'default'}"
        return Text(f"[{slot.name}]"), kind, Text(detail)
    if seg.kind is SegmentKind.INPUT:
        return Text(f"<{seg.name}>"), kind, Text("input, truncated if too long")
    if seg.kind is SegmentKind.MASK:
        return Text("[MASK]"), kind, Text("the answer is read here")
    return Text(repr(seg.text)), kind, Text("frozen anchor")


def _visible(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\x1b``): data never
    restyles or moves the terminal. Line breaks and tabs stay."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def _show(seg: Segment, compiled: Template) -> tuple[str, str]:
    if seg.kind is SegmentKind.INPUT:
        return _visible(seg.text), _STYLE[seg.kind]
    if seg.kind is SegmentKind.SOFT:
        return f"<{compiled.slots[seg.slot].name}>", _STYLE[seg.kind]
    if seg.kind is SegmentKind.MASK:
        return "<MASK>", _STYLE[seg.kind]
    return seg.text, ""


def _show_tokens(compiled: Template, values: dict, model: str, max_length: int) -> None:
    from promptkit.backbone.loading import load_tokenizer
    from promptkit.core.data import as_examples
    from promptkit.text.encoding import PromptTokenizer

    tokenizer, kind = load_tokenizer(model)
    encoder = PromptTokenizer(compiled, tokenizer, max_length, kind == "causal_lm")
    encoded = encoder(as_examples([values], {}, compiled.inputs))[0]
    table = Table("#", "token", "id", "kind")
    for pos, (tid, slot, word) in enumerate(
        zip(encoded.input_ids, encoded.slot_ids, encoded.word_ids, strict=True)
    ):
        kind_of = (
            f"soft [{compiled.slots[slot].name}]"
            if slot >= 0
            else f"input word {word}"
            if word >= 0
            else "template"
        )
        if pos == encoded.mask_position:
            kind_of += " <- answer read here"
        token = "" if slot >= 0 else tokenizer.convert_ids_to_tokens(tid)
        table.add_row(str(pos), Text(token), "" if slot >= 0 else str(tid), Text(kind_of))
    console.print(table)


verbalizer_app = typer.Typer(help="Label words for verbalizers.", no_args_is_help=True)
app.add_typer(verbalizer_app, name="verbalizer")


@verbalizer_app.command("search")
def verbalizer_search(
    config: Annotated[Path, typer.Argument(help="YAML run config")],
    output: Annotated[Path, typer.Option("--output", help="verbalizer YAML to write")],
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="words per class")] = 3,
    candidates: Annotated[
        int, typer.Option(min=1, help="best words by likelihood ratio a class chooses from")
    ] = 50,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a.b=value")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace OUTPUT if it exists")] = False,
    threads: Threads = None,
) -> None:
    """Search label words for CONFIG's classes on its training split (LM-BFF's automatic
    label words, PETAL's likelihood ratio) and write them for `head.verbalizer: OUTPUT`."""
    with _reported():
        _use_threads(threads)
        from promptkit.runs.config import load_config
        from promptkit.text.label_search import check_output, search_config, write_verbalizer

        loaded = load_config(config, set_ or [])
        check_output(output, overwrite)
        words = search_config(loaded, per_class, candidates, progress=True)
        description = (
            f"label words searched on the training split of {config} "
            f"({per_class} per class, from {candidates} candidates)"
        )
        write_verbalizer(output, words, description, overwrite)
    table = Table("class", "label words")
    for label, group in words.items():
        table.add_row(Text(label), Text(", ".join(group)))
    console.print(table)
    console.print(Text(f"written to {output}"))
