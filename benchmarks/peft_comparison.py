"""Training-step time and memory of promptkit against PEFT, side by side, as ratios.

From the repository root (after `python examples/assets.py --only minilm smollm2`):

    python benchmarks/peft_comparison.py [--steps 10] [--batch 16] [--length 64]

Cases, each on the same batch of token ids and the same classification loss:
  prefix  all-MiniLM-L6-v2, sequence classification, 16 key/value prefixes at every layer
          (promptkit: `placement: prefix` + CLS head; PEFT: PrefixTuningConfig, SEQ_CLS)
  prompt  SmolLM2-135M (a causal LM), classification from the last token, 20 soft tokens
          (promptkit: `placement: input` + last-token head; PEFT: PromptTuningConfig, SEQ_CLS)
and full fine-tuning of the same backbone (promptkit, `trainable: [all, head]`) as the
reference point. Every measurement runs in its own process, so peak memory is its own:
  step_ms      median wall time of one optimizer step (forward, backward, AdamW)
  saved_mb     activations autograd keeps for the backward pass (measured exactly)
  peak_rss_mb  the process's peak resident memory (weights, gradients, optimizer included)
  in_use_mb    the same peak in a second process where glibc returns freed blocks to the
               system at once (MALLOC_MMAP_THRESHOLD_): memory in use, without what the
               allocator keeps after a free (which depends on the order of allocations)
Results go to benchmarks/results/peft_comparison.json; the table shows promptkit / PEFT.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / ".assets"
CASES = {
    "prefix": {"backbone": ASSETS / "minilm-l6", "tokens": 16, "pool": "cls"},
    "prompt": {"backbone": ASSETS / "smollm2-135m", "tokens": 20, "pool": "last"},
}
N_CLASSES = 2


def promptkit_model(case: str, method: str) -> tuple[torch.nn.Module, callable]:
    """promptkit's model and a function batch -> logits."""
    from promptkit import build_model
    from promptkit.recipe import ModelConfig

    spec = CASES[case]
    placement = "prefix" if case == "prefix" else "input"
    tuned = method == "promptkit"
    recipe = ModelConfig.model_validate(
        {
            "backbone": {"name": str(spec["backbone"])},
            "template": f"[P*{spec['tokens']}] <x>" if tuned else "<x>",
            "head": {"type": "classifier", "pool": spec["pool"], "classes": ["a", "b"]},
            "prompts": {"placement": placement, "init": "random"},
            "trainable": ["prompts", "head"] if tuned else ["all", "head"],
        }
    )
    model = build_model(recipe)
    n_soft = spec["tokens"] if tuned and placement == "input" else 0

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


def peft_model(case: str) -> tuple[torch.nn.Module, callable]:
    """PEFT's model on the same backbone and a function batch -> logits."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    spec = CASES[case]
    base = AutoModelForSequenceClassification.from_pretrained(
        spec["backbone"], num_labels=N_CLASSES, dtype=torch.float32
    )
    base.config.pad_token_id = base.config.pad_token_id or 0
    kind = PrefixTuningConfig if case == "prefix" else PromptTuningConfig
    model = get_peft_model(base, kind(task_type="SEQ_CLS", num_virtual_tokens=spec["tokens"]))
    mask = None

    def forward(ids: torch.Tensor) -> torch.Tensor:
        nonlocal mask
        mask = torch.ones_like(ids) if mask is None or mask.shape != ids.shape else mask
        return model(input_ids=ids, attention_mask=mask).logits

    return model, forward


def measure(case: str, method: str, steps: int, batch: int, length: int) -> dict:
    """Time ``steps`` optimizer steps after two warm-up steps; measure memory."""
    torch.manual_seed(0)
    model, forward = peft_model(case) if method == "peft" else promptkit_model(case, method)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = 1000  # ordinary tokens of either vocabulary
    ids = torch.randint(100, vocab, (batch, length))
    labels = torch.randint(N_CLASSES, (batch,))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if tensor.untyped_storage().data_ptr() not in weights:  # activations, not weights
            saved += tensor.numel() * tensor.element_size()
        return tensor

    def step() -> None:
        torch.nn.functional.cross_entropy(forward(ids), labels).backward()
        optimizer.step()
        optimizer.zero_grad()

    # Saved activations are counted on a warm-up step of their own: the counting hook keeps
    # graphs alive longer (reference cycles), which would inflate the timed steps' memory.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    gc.collect()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "case": case,
        "method": method,
        "trainable": sum(p.numel() for p in params),
        "step_ms": 1000 * statistics.median(times),
        "saved_mb": saved / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.batch, args.length)))
        return
    results = []
    for case in args.cases:
        for method in ("promptkit", "peft", "full_finetune"):
            result = child(case, method, args, args.steps)
            trimmed = child(case, method, args, 1, {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
            results.append({**result, "in_use_mb": trimmed["peak_rss_mb"]})
            print(json.dumps(results[-1]), flush=True)
    report(results, args)


def child(
    case: str, method: str, args: argparse.Namespace, steps: int, env: dict | None = None
) -> dict:
    """``measure`` in a process of its own (with extra environment variables)."""
    command = [sys.executable, __file__, "--child", case, method, "--steps", str(steps)]
    command += ["--batch", str(args.batch), "--length", str(args.length)]
    environment = {**os.environ, **(env or {})}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], args: argparse.Namespace) -> None:
    """Print promptkit / PEFT and full fine-tuning / PEFT ratios; save everything."""
    from rich.console import Console
    from rich.table import Table

    keys = ["step_ms", "saved_mb", "peak_rss_mb", "in_use_mb"]
    table = Table("case", "run", *keys, title="ratios to PEFT (lower is better for promptkit)")
    for case in args.cases:
        by = {r["method"]: r for r in results if r["case"] == case}
        for method in ("promptkit", "full_finetune"):
            ratios = [f"{by[method][k] / by['peft'][k]:.2f}" for k in keys]
            table.add_row(case, f"{method} / peft", *ratios)
    Console().print(table)
    out = REPO / "benchmarks" / "results" / "peft_comparison.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"steps": args.steps, "batch": args.batch, "length": args.length}
    out.write_text(json.dumps({"settings": settings, "results": results}, indent=2))


if __name__ == "__main__":
    main()
