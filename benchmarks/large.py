"""Quantized frozen backbones against the unquantized one: memory, step time, accuracy, BLEU.

From the repository root (after `python examples/assets.py --only smollm2 gemma3 mr e2e`):

    python benchmarks/large.py [--models smollm2 gemma3] [--cases ...] [--tasks ...] [--quick]
    python benchmarks/large.py --markdown        # the table of what large.json holds

Models: SmolLM2-135M and Gemma-3-270M. Cases: the unquantized backbone (float32 on the CPU,
bfloat16 on a GPU), bitsandbytes NF4 4-bit and 8-bit (LLM.int8), torchao int8 weight-only
and int8 dynamic activations (on whatever device runs: cuda when there is one). Tasks:

  memory  the loaded backbone's bytes as stored (parameters and buffers, packed weights with
          their scales, a tied weight once), and the peak memory of one training step of the
          sentiment demo's P-tuning model (batch 16), over the memory in use before it: on a
          GPU torch's peak allocated; on the CPU the peak resident set (VmHWM, reset once the
          model is built) of a process of its own per case, where glibc hands freed blocks
          back to the system at once (MALLOC_MMAP_THRESHOLD_), less its resident set then
  time    that training step (forward, backward, AdamW) for every case, loaded in one process
          and timed in interleaved rounds (benchmarks/interleaved.py): the median of the
          per-round ratios to the unquantized step, with quartiles
  mr      test accuracy of examples/sentiment's P-tuning (ptuning_cloze.yaml) on MR
  e2e     BLEU of prefix tuning on E2E (examples/generation's "prefix tuning" row, e2e.yaml)

`--quick` trains and scores on a smaller budget (QUICK below), the same for every case; the
full budget is the examples' own configs. The goals checked: a 4-bit backbone at most 0.3x
the unquantized one's memory, its accuracy within 1 point and its BLEU within 1.5.

Progress goes to the terminal and to benchmarks/results/large.log. Results go to
benchmarks/results/large.json after every measurement; a rerun with the same budget keeps
them and measures only what is missing (`--redo` measures again).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from interleaved import ratio, rounds, shown

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # measure this checkout's promptkit, not an installed one
ASSETS = REPO / ".assets"
EXAMPLES = REPO / "examples"
RESULTS = REPO / "benchmarks" / "results"
OUT = RESULTS / "large.json"
MODELS = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
BASELINE = "unquantized"
CASES: dict[str, dict[str, Any] | None] = {
    BASELINE: None,
    "bnb-nf4": {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4"},
    # the same, with what stays unquantized (the tied embeddings, the norms) in bfloat16
    "bnb-nf4-bf16": {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4"},
    "bnb-int8": {"method": "bitsandbytes", "bits": 8},
    "torchao-int8": {"method": "torchao", "quant_type": "Int8WeightOnlyConfig"},
    "torchao-int8-dynamic": {
        "method": "torchao",
        "quant_type": "Int8DynamicActivationInt8WeightConfig",
    },
}
CASE_DTYPES = {"bnb-nf4-bf16": "bfloat16"}  # backbone.dtype where it is not the baseline's
FOUR_BIT = "bnb-nf4"
TASKS = ("memory", "time", "mr", "e2e")
MR_CONFIG = EXAMPLES / "sentiment" / "ptuning_cloze.yaml"
E2E_METHOD = "prefix tuning (10 prefixes, MLP)"
# The smaller budget: config changes, and how many test (and validation) examples are kept,
# the first ones of each file (E2E: the rows of the first distinct inputs).
QUICK = {
    "mr": {
        "changes": {"trainer": {"epochs": 3}, "data": {"validation_few_shot": 16}},
        "test": 200,
        "validation": None,
    },
    "e2e": {"changes": {"data": {"few_shot": 64}}, "test": 20, "validation": 10},
}
GOALS = {"memory": 0.3, "accuracy": 1.0, "bleu": 1.5}  # x, points, BLEU points
STEP_BATCH = 16
log = logging.getLogger("large")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backbone_section(model: str, case: str) -> dict[str, Any]:
    """The config's backbone section for a model and case."""
    section = {
        "name": str(ASSETS / MODELS[model]),
        "dtype": CASE_DTYPES.get(case, "bfloat16" if device().type == "cuda" else "float32"),
    }
    if CASES[case] is not None:
        section["quantization"] = CASES[case]
    return section


def _module(path: Path) -> Any:
    """A module of the examples, by file (examples/*/run.py share one name)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))  # their `from assets import ...`
    spec.loader.exec_module(module)
    return module


def run_config(task: str, model: str, case: str, quick: bool, scratch: Path) -> Any:
    """The validated run config of the MR or E2E task for a model and case."""
    from promptkit.core.config import merged
    from promptkit.runs.config import validate_config

    if task == "mr":
        data = yaml.safe_load(MR_CONFIG.read_text())
    else:
        generation = _module(EXAMPLES / "generation" / "run.py")
        base = yaml.safe_load((EXAMPLES / "generation" / "e2e.yaml").read_text())
        method = generation.METHODS[E2E_METHOD]
        data = merged(base, method)
        data["trainable"] = ["prompts"]
    data = merged(data, {"backbone": backbone_section(model, case)})
    data = merged(data, {"output_dir": str(scratch / "run"), "trainer": {"progress": False}})
    for split in ("train", "validation", "test"):
        data["data"][split] = str(REPO / data["data"][split])
    if quick:
        data = merged(data, QUICK[task]["changes"])
        for split in ("validation", "test"):
            if QUICK[task][split]:
                data["data"][split] = _first(task, data["data"][split], QUICK[task][split], scratch)
    return validate_config(data, f"{task} {model} {case}")


def _first(task: str, path: str, count: int, scratch: Path) -> str:
    """A copy of a jsonl split with its first ``count`` rows (E2E: the rows of its first
    ``count`` distinct inputs, so that every input keeps all its references)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    if task == "e2e":
        inputs = list(dict.fromkeys(r["input"] for r in rows))[:count]
        rows = [r for r in rows if r["input"] in inputs]
    else:
        rows = rows[:count]
    out = scratch / f"{task}-{Path(path).name}"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(out)


def training_step(model: str, case: str) -> tuple[torch.nn.Module, Callable[[], None]]:
    """The sentiment demo's P-tuning model on a model and case, and one optimizer step of it
    on the first training batch."""
    import promptkit
    from promptkit.text.data import load_splits

    with tempfile.TemporaryDirectory() as scratch:
        config = run_config("mr", model, case, False, Path(scratch))
    prompt_model = promptkit.build_model(config.recipe()).to(device())
    splits, _ = load_splits(
        config.data,
        prompt_model.task,
        prompt_model.classes,
        config.inputs,
        prompt_model.template.inputs,
        config.seed,
    )
    train = splits.train.subset(range(STEP_BATCH))
    batch = prompt_model.collate(prompt_model.encode(train.examples), train.labels)
    batch = {key: value.to(device()) for key, value in batch.items()}
    params = [p for p in prompt_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    prompt_model.train()

    def step() -> None:
        prompt_model.task.loss(prompt_model(batch), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        if device().type == "cuda":
            torch.cuda.synchronize()

    return prompt_model, step


def measure_memory(model: str, case: str) -> dict[str, float]:
    """Stored bytes of the backbone; peak memory of one training step over what was in use."""
    from promptkit.backbone.quantization import stored_tensors

    prompt_model, step = training_step(model, case)
    stored = sum(t.numel() * t.element_size() for _, t in stored_tensors(prompt_model.lm))
    if device().type == "cuda":
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - before
        where = "cuda max_memory_allocated"
    else:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
        step()
        peak = (_status_kib("VmHWM") - before) * 1024
        where = "cpu VmHWM"
    return {"backbone_mib": stored / 2**20, "step_peak_mib": peak / 2**20, "peak_of": where}


def _status_kib(field: str) -> int:
    line = next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field)
    )
    return int(line.split()[1])


def measure_times(model: str, cases: list[str], repeats: int) -> dict[str, list[float]]:
    """Seconds of each case's training step, in interleaved rounds."""
    steps = {case: training_step(model, case)[1] for case in cases}
    return rounds(
        steps,
        repeats,
        alternate=True,
        done=lambda n: log.info(
            "%s: time round %d of %d (the first warms up)", model, n, repeats + 1
        ),
    )


def measure_task(task: str, model: str, case: str, quick: bool) -> dict[str, Any]:
    """Train the task's prompt and score the test split."""
    import promptkit

    with tempfile.TemporaryDirectory() as scratch:
        config = run_config(task, model, case, quick, Path(scratch))
        result = promptkit.fit(config, overwrite=True)
    return {**result.test, "trainable_parameters": result.trainable_parameters}


def child(args: argparse.Namespace, kind: str, model: str, *cases: str) -> Any:
    """One measurement in a process of its own; its JSON answer."""
    command = [sys.executable, __file__, "--child", kind, model, *cases]
    command += ["--rounds", str(args.rounds)] + (["--quick"] if args.quick else [])
    command += ["--threads", str(args.threads)] if args.threads else []
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=environment)
    if done.returncode:
        raise RuntimeError(f"{kind} {model} {' '.join(cases)} failed (its errors are above)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def answer_child(args: argparse.Namespace) -> Any:
    kind, model, *cases = args.child
    if kind == "memory":
        return measure_memory(model, cases[0])
    if kind == "time":
        return measure_times(model, cases, args.rounds)
    return measure_task(kind, model, cases[0], args.quick)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "budget": "quick" if args.quick else "full",
        "quick": QUICK if args.quick else None,
        "device": device().type,
        "step_batch": STEP_BATCH,
    }


def load_results(settings: dict[str, Any], redo: bool) -> dict[str, Any]:
    """What large.json holds (nothing with --redo); results of other settings are kept, and
    measuring with these is refused."""
    if OUT.exists() and not redo:
        saved = json.loads(OUT.read_text())
        if saved["settings"] != settings:
            raise SystemExit(
                f"{OUT} holds results of other settings ({_budget(saved['settings'])}): "
                "measure with those (--quick is the smaller budget), or pass --redo to "
                "replace them."
            )
        return saved
    return {"settings": settings, "models": {}}


def save(results: dict[str, Any]) -> None:
    OUT.write_text(json.dumps(results, indent=2) + "\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every task of every model and case that large.json lacks, saved as each finishes."""
    results = load_results(settings_of(args), args.redo)
    for model in args.models:
        done = results["models"].setdefault(model, {})
        for case in args.cases:
            done.setdefault(case, {})
        for task in args.tasks:
            if task == "time":
                missing = [c for c in args.cases if "step_s" not in done[c]]
                if missing:
                    cases = list(dict.fromkeys([BASELINE, *args.cases]))
                    log.info("%s: timing the training step of %s", model, ", ".join(cases))
                    for case, seconds in child(args, "time", model, *cases).items():
                        done.setdefault(case, {})["step_s"] = seconds
                    save(results)
                continue
            for case in args.cases:
                if task in done[case]:
                    continue
                log.info("%s %s: %s ...", model, case, task)
                try:
                    done[case][task] = child(args, task, model, case)
                except RuntimeError as err:  # the others still run; a rerun tries it again
                    log.error("%s", err)
                    continue
                log.info("%s %s: %s %s", model, case, task, _brief(done[case][task]))
                save(results)
    return results


def _brief(value: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in value.items() if isinstance(v, float))


def table(results: dict[str, Any]) -> str:
    """The results as a markdown table, with each goal met or not (4-bit rows)."""
    header = (
        "| model | case | backbone MiB | x unquantized | step peak MiB | step time x unquantized "
        "| MR accuracy | E2E BLEU |"
    )
    lines = [header, "|" + "---|" * 8]
    for model, cases in results["models"].items():
        base = cases.get(BASELINE, {})
        for case, value in cases.items():
            memory = value.get("memory", {})
            memory_ratio = _ratio(memory, base.get("memory"), "backbone_mib")
            step = value.get("step_s")
            step_ratio = "1" if case == BASELINE and step else "-"
            if step and base.get("step_s") and case != BASELINE:
                step_ratio = shown(ratio(step, base["step_s"]))
            if step and case == BASELINE:
                step_ratio = f"1 ({1000 * statistics.median(step):.0f} ms)"
            lines.append(
                f"| {model} | {case} | {_number(memory.get('backbone_mib'), '.0f')} "
                f"| {memory_ratio} | {_number(memory.get('step_peak_mib'), '.0f')} | {step_ratio} "
                f"| {_score(value, base, 'mr', 'accuracy', 100)} "
                f"| {_score(value, base, 'e2e', 'bleu', 1)} |"
            )
    return "\n".join([_budget(results["settings"]), "", *lines, "", *goals(results)])


def _budget(settings: dict[str, Any]) -> str:
    """What the numbers were measured with, in words."""
    where = f"on {settings['device']}, step batch {settings['step_batch']}"
    if settings["budget"] == "full":
        return f"Full budget (the examples' configs), {where}."
    mr, e2e = settings["quick"]["mr"], settings["quick"]["e2e"]
    return (
        f"Quick budget, {where}: MR {json.dumps(mr['changes'])}, the first {mr['test']} test "
        f"sentences; E2E {json.dumps(e2e['changes'])}, the first {e2e['validation']} "
        f"validation and {e2e['test']} test inputs (all their references)."
    )


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if key not in value or not base:
        return "-"
    return f"{value[key] / base[key]:.2f}"


def _score(value: dict[str, Any], base: dict[str, Any], task: str, key: str, scale: int) -> str:
    if task not in value:
        return "-"
    text = f"{scale * value[task][key]:.1f}"
    if task in base and value is not base:
        text += f" ({scale * (value[task][key] - base[task][key]):+.1f})"
    return text


def goals(results: dict[str, Any]) -> list[str]:
    """Whether the 4-bit backbone meets each goal, per model (what was measured)."""
    lines = []
    for model, cases in results["models"].items():
        four, base = cases.get(FOUR_BIT, {}), cases.get(BASELINE, {})
        checks = []
        if "memory" in four and "memory" in base:
            value = four["memory"]["backbone_mib"] / base["memory"]["backbone_mib"]
            checks.append(_goal(f"memory {value:.2f}x", value <= GOALS["memory"], "<= 0.3x"))
        if "mr" in four and "mr" in base:
            drop = round(100 * (base["mr"]["accuracy"] - four["mr"]["accuracy"]), 6)
            checks.append(
                _goal(f"accuracy {-drop:+.1f}", drop <= GOALS["accuracy"], "within 1 point")
            )
        if "e2e" in four and "e2e" in base:
            drop = base["e2e"]["bleu"] - four["e2e"]["bleu"]
            checks.append(_goal(f"BLEU {-drop:+.1f}", drop <= GOALS["bleu"], "within 1.5"))
        if checks:
            lines.append(f"- {model}, {FOUR_BIT}: " + "; ".join(checks))
    return lines


def _goal(measured: str, met: bool, goal: str) -> str:
    return f"{measured} ({'met' if met else 'NOT met'}: {goal})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--quick", action="store_true", help="the smaller budget (QUICK)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds after a warm-up")
    parser.add_argument("--threads", type=int, help="torch threads in each process")
    parser.add_argument("--redo", action="store_true", help="measure again what is saved")
    parser.add_argument("--markdown", action="store_true", help="print the table of large.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.markdown:
        print(table(json.loads(OUT.read_text())))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler()]  # stderr: a child's answer is its last stdout line
    if not args.child:
        handlers.append(logging.FileHandler(RESULTS / "large.log"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers)
    if args.child:
        print(json.dumps(answer_child(args)))
        return
    print(table(run(args)))


if __name__ == "__main__":
    main()
