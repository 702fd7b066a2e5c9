"""Training-step time and memory of promptkit against PEFT, as interleaved ratios with spreads.

From the repository root (after `python examples/assets.py --only minilm smollm2`):

    python benchmarks/peft_comparison.py [--rounds 8] [--memory-repeats 3] [--batch 16]

Cases, each on the same batch of token ids and the same classification loss:
  prefix  all-MiniLM-L6-v2, sequence classification, 16 key/value prefixes at every layer
          (promptkit: `placement: prefix` + CLS head; PEFT: PrefixTuningConfig, SEQ_CLS), and
          promptkit's prefixes at the last 2 layers only (`layers: last:2`: the 4 layers below
          run without autograd), which PEFT cannot do
  prompt  SmolLM2-135M (a causal LM), classification from the last token, 20 soft tokens
          (promptkit: `placement: input` + last-token head; PEFT: PromptTuningConfig, SEQ_CLS)
and, for each, the reference: the frozen backbone's forward and the backward to its input
embeddings without prompts (a trained classification layer on top), run as transformers runs
it (every position through every layer). With --compile, promptkit's run again with
`backbone.compile: true` (step time only; its first steps, which compile, are not timed).

  step     one optimizer step (forward, backward, AdamW): every run of a case is loaded in
           one process and timed once per round, the rounds repeat after a warm-up, and each
           ratio is the median of the per-round ratios with its interquartile range
           (benchmarks/interleaved.py)
  saved    activations autograd keeps for the backward pass (measured exactly, once)
  in use   peak memory in use: the peak resident set of a process of its own per run, where
           glibc hands freed blocks back to the system at once (MALLOC_MMAP_THRESHOLD_), so it
           counts weights, gradients, optimizer state and activations, without what the
           allocator keeps after a free; the runs' processes alternate, repeated, and the
           ratio is the median of the per-repeat ratios with its interquartile range
`--profile CASE` instead profiles promptkit's and PEFT's steps of a case (torch.profiler,
alternating, --rounds each) and prints, per operator and input shapes, what promptkit runs
that PEFT does not, and the totals.

Progress goes to the terminal and to benchmarks/results/peft_comparison.log; results to
benchmarks/results/peft_comparison.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from interleaved import ratio, rounds, shown

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / ".assets"
RESULTS = REPO / "benchmarks" / "results"
CASES = {
    "prefix": {
        "backbone": ASSETS / "minilm-l6",
        "tokens": 16,
        "pool": "cls",
        "runs": ["promptkit", "promptkit last:2", "peft", "reference"],
    },
    "prompt": {
        "backbone": ASSETS / "smollm2-135m",
        "tokens": 20,
        "pool": "last",
        "runs": ["promptkit", "peft", "reference"],
    },
}
N_CLASSES = 2
VOCAB = (100, 1000)  # ordinary tokens of either vocabulary
log = logging.getLogger("peft_comparison")

Forward = Callable[[torch.Tensor], torch.Tensor]


def promptkit_model(case: str, run: str) -> tuple[torch.nn.Module, Forward]:
    """promptkit's model and a function ids -> logits (``run``: "promptkit", "promptkit
    last:K" or "promptkit compile")."""
    from promptkit import build_model
    from promptkit.text.config import ModelConfig

    spec = CASES[case]
    placement = "prefix" if case == "prefix" else "input"
    prompts = {"placement": placement, "init": "random"}
    if run.startswith("promptkit last:"):
        prompts["layers"] = run.split()[1]
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(spec["backbone"]), "compile": run == "promptkit compile"},
            "template": f"[P*{spec['tokens']}] <x>",
            "head": {"type": "classifier", "pool": spec["pool"], "classes": ["a", "b"]},
            "prompts": prompts,
            "trainable": ["prompts", "head"],
        }
    )
    model = build_model(recipe)
    n_soft = spec["tokens"] if placement == "input" else 0

    def forward(ids: torch.Tensor) -> torch.Tensor:
        rows = ids.shape[0]
        slots = torch.arange(n_soft).expand(rows, -1)
        batch = {
            "input_ids": torch.cat([torch.zeros_like(slots), ids], 1),
            "slot_ids": torch.cat([slots, torch.full_like(ids, -1)], 1),
            "attention_mask": torch.ones(rows, n_soft + ids.shape[1], dtype=torch.long),
        }
        return model(batch)

    return model, forward


def classifier(case: str) -> torch.nn.Module:
    """The backbone with a classification layer, as PEFT's SEQ_CLS runs train it."""
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        CASES[case]["backbone"], num_labels=N_CLASSES, dtype=torch.float32
    )
    base.config.pad_token_id = base.config.pad_token_id or 0
    return base


def peft_model(case: str) -> tuple[torch.nn.Module, Forward]:
    """PEFT's model on the same backbone and a function ids -> logits."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    spec = CASES[case]
    kind = PrefixTuningConfig if case == "prefix" else PromptTuningConfig
    config = kind(task_type="SEQ_CLS", num_virtual_tokens=spec["tokens"])
    model = get_peft_model(classifier(case), config)

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

    return model, forward


def reference_model(case: str) -> tuple[torch.nn.Module, Forward]:
    """The frozen backbone without prompts, its forward and the backward to its input
    embeddings (under a trained classification layer)."""
    model = classifier(case)
    model.requires_grad_(False)
    head = next(m for n, m in model.named_children() if n in ("classifier", "score"))
    head.requires_grad_(True)
    embed = model.get_input_embeddings()

    def forward(ids: torch.Tensor) -> torch.Tensor:
        embeds = embed(ids).detach().requires_grad_()
        return model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits

    return model, forward


def built(case: str, run: str) -> tuple[torch.nn.Module, Forward]:
    """One run's model and forward."""
    if run == "peft":
        return peft_model(case)
    if run == "reference":
        return reference_model(case)
    return promptkit_model(case, run)


def stepper(case: str, run: str, ids: torch.Tensor, labels: torch.Tensor) -> dict:
    """A run's model and a function that takes one optimizer step on the batch."""
    torch.manual_seed(0)
    model, forward = built(case, run)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        torch.nn.functional.cross_entropy(forward(ids), labels).backward()
        optimizer.step()
        optimizer.zero_grad()

    return {"model": model, "step": step, "trainable": sum(p.numel() for p in params)}


def saved_bytes(model: torch.nn.Module, step: Callable[[], None]) -> int:
    """Bytes of the activations one step keeps for its backward pass (weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if tensor.untyped_storage().data_ptr() not in weights:
            saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    gc.collect()  # the counting hook keeps graphs alive longer (reference cycles)
    return saved


def batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch every run of every case trains on."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(*VOCAB, (args.batch, args.length), generator=generator)
    return ids, torch.randint(N_CLASSES, (args.batch,), generator=generator)


def timed_runs(case: str, args: argparse.Namespace) -> list[str]:
    """The runs of a case whose steps are timed."""
    return CASES[case]["runs"] + (["promptkit compile"] if args.compile else [])


def time_case(case: str, args: argparse.Namespace) -> dict:
    """Every run of a case in this process: saved activations, then interleaved step times."""
    ids, labels = batch(args)
    runs = {run: stepper(case, run, ids, labels) for run in timed_runs(case, args)}
    saved = {run: saved_bytes(r["model"], r["step"]) / 2**20 for run, r in runs.items()}
    log.info("%s: models built, saved activations counted", case)
    times = rounds(
        {run: r["step"] for run, r in runs.items()},
        args.rounds,
        alternate=True,
        done=lambda n: log.info(
            "%s: round %d of %d (the first warms up)", case, n, 1 + args.rounds
        ),
    )
    return {
        run: {"trainable": r["trainable"], "saved_mb": saved[run], "step_s": times[run]}
        for run, r in runs.items()
    }


def profile_case(case: str, args: argparse.Namespace) -> None:
    """Self CPU milliseconds per step, by operator and input shapes, of promptkit and PEFT;
    print the operators whose calls differ, and the totals."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    ids, labels = batch(args)
    runs = {run: stepper(case, run, ids, labels)["step"] for run in ("promptkit", "peft")}
    milliseconds = {run: Counter() for run in runs}
    calls = {run: Counter() for run in runs}
    for index in range(1 + args.rounds):
        for run, step in list(runs.items())[:: -1 if index % 2 else 1]:
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiled:
                step()
            for event in profiled.key_averages(group_by_input_shape=True) if index else []:
                key = f"{event.key} {event.input_shapes}"
                milliseconds[run][key] += event.self_cpu_time_total / 1000 / args.rounds
                calls[run][key] = event.count
    differing = [
        k for k in calls["promptkit"] | calls["peft"] if calls["promptkit"][k] != calls["peft"][k]
    ]
    for key in sorted(differing, key=lambda k: -milliseconds["promptkit"][k]):
        print(
            f"{milliseconds['promptkit'][key]:8.1f} ms x{calls['promptkit'][key]:<4d}"
            f"{milliseconds['peft'][key]:8.1f} ms x{calls['peft'][key]:<4d} {key[:110]}"
        )
    for run, spent in milliseconds.items():
        print(f"{run}: {sum(spent.values()):.0f} ms of operators per step")


def peak_in_use(case: str, run: str, args: argparse.Namespace) -> float:
    """MB at the peak of two steps of one run, in this process (started with glibc handing
    freed blocks back at once)."""
    ids, labels = batch(args)
    step = stepper(case, run, ids, labels)["step"]
    step()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace, *what: str) -> object:
    """One measurement in a process of its own; its JSON answer."""
    command = [sys.executable, __file__, "--child", *what, "--rounds", str(args.rounds)]
    command += ["--batch", str(args.batch), "--length", str(args.length)]
    command += ["--compile"] if args.compile else []
    environment = dict(os.environ)
    if what[0] == "memory":
        environment["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=environment)
    if done.returncode:
        raise RuntimeError(f"{' '.join(what)} failed (its errors are above)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(case: str, args: argparse.Namespace) -> dict:
    """Interleaved step times in one process, then each run's peak in use in processes of
    their own, the runs alternating, ``args.memory_repeats`` times."""
    log.info("%s: timing %s, %d rounds", case, ", ".join(timed_runs(case, args)), args.rounds)
    runs = child(args, "time", case)
    for run in CASES[case]["runs"]:
        runs[run]["in_use_mb"] = []
    for repeat in range(args.memory_repeats):
        for run in CASES[case]["runs"]:
            runs[run]["in_use_mb"].append(child(args, "memory", case, run))
            mb = runs[run]["in_use_mb"][-1]
            log.info("%s: %s peak in use %.0f MB (repeat %d)", case, run, mb, repeat + 1)
    return runs


def ratios(runs: dict) -> dict:
    """Each run against PEFT: step time and peak in use (median and quartiles of the
    per-round or per-repeat ratios), saved activations."""
    peft = runs["peft"]
    return {
        run: {
            "step": ratio(values["step_s"], peft["step_s"]),
            "in_use": ratio(values["in_use_mb"], peft["in_use_mb"])
            if "in_use_mb" in values
            else None,
            "saved": values["saved_mb"] / peft["saved_mb"],
        }
        for run, values in runs.items()
        if run != "peft"
    }


def report(results: dict, args: argparse.Namespace) -> None:
    """Print the ratios to PEFT; save everything."""
    import statistics

    from rich.console import Console
    from rich.table import Table

    table = Table(
        "case",
        "run",
        "step time",
        "saved activations",
        "peak in use",
        "PEFT step (ms)",
        title="ratios to PEFT: median (interquartile range)",
    )
    for case, runs in results.items():
        peft_ms = 1000 * statistics.median(runs["measured"]["peft"]["step_s"])
        for run, value in runs["ratios"].items():
            in_use = shown(value["in_use"]) if value["in_use"] else "-"
            row = (shown(value["step"]), f"{value['saved']:.2f}", in_use)
            table.add_row(case, f"{run} / peft", *row, f"{peft_ms:.0f}")
    Console().print(table)
    keys = ("rounds", "memory_repeats", "batch", "length", "compile")
    settings = {key: getattr(args, key) for key in keys}
    out = RESULTS / "peft_comparison.json"
    out.write_text(json.dumps({"settings": settings, "cases": results}, indent=2))
    log.info("results in %s", out.relative_to(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds after a warm-up")
    parser.add_argument("--memory-repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--compile", action="store_true", help="time backbone.compile too")
    parser.add_argument("--profile", choices=list(CASES), help="profile one case instead")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(RESULTS / "peft_comparison.log")],
    )
    if args.profile:
        profile_case(args.profile, args)
        return
    if args.child:
        kind, case, *run = args.child
        answer = time_case(case, args) if kind == "time" else peak_in_use(case, run[0], args)
        print(json.dumps(answer))
        return
    results = {}
    for case in args.cases:
        runs = measure(case, args)
        results[case] = {"measured": runs, "ratios": ratios(runs)}
    report(results, args)


if __name__ == "__main__":
    main()
