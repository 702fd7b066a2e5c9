"""Eight prompts on one frozen backbone: mixed-task batches against per-task batches and one
model copy per task, the memory a task adds, and a load test of the server.

From the repository root (after `python examples/assets.py --only smollm2 mr`):

    python benchmarks/multitask.py [--repeats 7] [--per-task 4] [--requests 400]

On SmolLM2-135M, eight tasks with randomly initialised prompts of every placement and three
heads (input, prefix and deep prompts of different lengths; verbalizer and classifier heads),
and ``--per-task`` MR sentences for each task:
  throughput  examples/s of
              - mixed: all rows in one Host call, tasks mixed within each batch,
              - per-task batches: the same Host, one call per task,
              - one copy per task: each task on its own backbone copy (a Predictor each),
              interleaved and repeated; ratios are medians of per-round ratios with their
              interquartile range (benchmarks/interleaved.py)
  memory      resident memory a task adds: a prompt on the shared backbone against a copy
  server      `promptkit serve`'s app on localhost under ``--concurrency`` clients sending
              ``--requests`` requests (random task, 1-4 inputs each): requests/s, p50/p99
              latency, failures, rows per shared batch
Results go to benchmarks/results/multitask.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from interleaved import ratio, rounds, shown

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

from assets import ensure  # noqa: E402

from promptkit.backbone.loading import load_backbone  # noqa: E402
from promptkit.core.config import validate  # noqa: E402
from promptkit.core.readers import read_rows  # noqa: E402
from promptkit.serving.host import Host  # noqa: E402
from promptkit.serving.predictor import Predictor  # noqa: E402
from promptkit.text.config import ModelConfig  # noqa: E402
from promptkit.text.model import build_model  # noqa: E402

MOOD = {"positive": ["great", "good"], "negative": ["terrible", "bad"]}
PREFIX = {"placement": "prefix", "encoder": "none", "init": "random"}
TASKS = {
    "input-4": {"template": "<x> It was [P*4] [MASK].", "head": {"verbalizer": MOOD}},
    "input-20": {"template": "[P*20] <x> It was [MASK].", "head": {"verbalizer": MOOD}},
    "input-cls": {
        "template": "[P*8] <x>",
        "head": {"type": "classifier", "pool": "last", "classes": ["a", "b", "c"]},
    },
    "prefix-8": {
        "template": "[P*8] <x> It was [MASK].",
        "prompts": PREFIX,
        "head": {"verbalizer": MOOD},
    },
    "prefix-16": {
        "template": "[P*16] <x> It was [MASK].",
        "prompts": PREFIX,
        "head": {"verbalizer": MOOD},
    },
    "prefix-cls": {
        "template": "[P*10] <x>",
        "prompts": PREFIX,
        "head": {"type": "classifier", "pool": "mean", "classes": ["a", "b"]},
    },
    "deep-6": {
        "template": "[P*6] <x> It was [MASK].",
        "prompts": {"placement": "deep"},
        "head": {"verbalizer": MOOD},
    },
    "deep-cls": {
        "template": "<x> [P*4]",
        "prompts": {"placement": "deep", "layers": "first:12"},
        "head": {"type": "classifier", "pool": "last", "classes": ["x", "y", "z", "w"]},
    },
}


def resident() -> int:
    """This process's resident memory in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def model_for(backbone, name: str, seed: int):
    recipe = validate(
        ModelConfig,
        {"backbone": {"name": backbone.name}, "seed": seed, **TASKS[name]},
        "benchmark",
    )
    return build_model(recipe, backbone=backbone).eval()


def build(path: str, text: str) -> tuple[Host, dict[str, Predictor], dict[str, float]]:
    """The host, a copy of the backbone per task, and the memory each way takes per task
    (resident memory once each model has answered, so that every weight was read)."""
    backbone = load_backbone(path)
    Predictor(model_for(backbone, "input-4", 99)).predict_proba([text])
    before = resident()
    models = {}
    for seed, name in enumerate(TASKS):
        models[name] = model_for(backbone, name, seed)
        Predictor(models[name]).predict_proba([text])
    shared = (resident() - before) / len(TASKS)
    before = resident()
    copies = {}
    for seed, name in enumerate(TASKS):
        copies[name] = Predictor(model_for(load_backbone(path), name, seed))
        copies[name].predict_proba([text])
    copied = (resident() - before) / len(TASKS)
    tensors = statistics.mean(
        sum(p.numel() * p.element_size() for p in [*m.prompts.parameters(), *m.head.parameters()])
        for m in models.values()
    )
    weights = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    memory = {
        "a task's prompt and head tensors (MiB)": tensors / 2**20,
        "the backbone's weights (MiB)": weights / 2**20,
        "resident memory added per task, shared backbone (MiB)": shared / 2**20,
        "resident memory added per task, own backbone copy (MiB)": copied / 2**20,
    }
    return Host(models), copies, memory


def throughput(args, host: Host, copies: dict[str, Predictor], texts: list[str]) -> dict:
    pairs = [(name, texts[i]) for i in range(args.per_task) for name in TASKS]
    own = {name: [t for n, t in pairs if n == name] for name in TASKS}
    batch = len(pairs)
    cases = {
        "mixed": lambda: host.predict_proba(pairs, batch_size=batch),
        "per-task batches": lambda: [
            host.predict_proba(own[name], run=name, batch_size=batch) for name in TASKS
        ],
        "one copy per task": lambda: [
            copies[name].predict_proba(own[name], batch_size=batch) for name in TASKS
        ],
    }
    with torch.inference_mode():
        times = rounds(cases, args.repeats)
    return {
        "examples_per_second": {k: len(pairs) / statistics.median(v) for k, v in times.items()},
        "time ratios": {
            "mixed / per-task batches": ratio(times["mixed"], times["per-task batches"]),
            "mixed / one copy per task": ratio(times["mixed"], times["one copy per task"]),
        },
    }


def load_test(args, host: Host, texts: list[str]) -> dict:
    """Requests against the server's app, run by uvicorn on a thread of this process."""
    import uvicorn

    from promptkit.serving.server import Limits, create_app

    config = uvicorn.Config(
        create_app(host, Limits(max_batch=32, max_wait_ms=5)), port=args.port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{args.port}"
    while not server.started:
        time.sleep(0.1)
    generator = random.Random(0)
    bodies = [
        {
            "run": generator.choice(list(TASKS)),
            "inputs": generator.sample(texts, k=generator.randint(1, 4)),
        }
        for _ in range(args.requests)
    ]

    def send(body: dict) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            response = httpx.post(url + "/predict", json=body, timeout=120)
            ok = response.status_code == 200 and len(response.json()["predictions"]) == len(
                body["inputs"]
            )
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - start, ok

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(send, bodies))
    elapsed = time.perf_counter() - start
    health = httpx.get(url + "/health").json()
    server.should_exit = True
    thread.join()
    latencies = sorted(seconds for seconds, _ in results)
    rows = sum(len(b["inputs"]) for b in bodies)
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "requests_per_second": args.requests / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "failed": sum(not ok for _, ok in results),
        "answered": health["requests"],
        "rows_per_batch": rows / max(health["batches"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    cache = ensure(["smollm2", "mr"])
    torch.manual_seed(0)
    texts = [row["sentence"] for row in read_rows(str(cache / "mr" / "test.jsonl"))][:64]
    host, copies, memory = build(str(cache / "smollm2-135m"), texts[0])
    report = {"device": "CPU", "threads": torch.get_num_threads(), "settings": vars(args)}
    report["throughput"] = throughput(args, host, copies, texts)
    del copies
    report["memory"] = memory
    report["server"] = load_test(args, host, texts)
    out = REPO / "benchmarks" / "results" / "multitask.json"
    out.write_text(json.dumps(report, indent=2))
    for case, value in report["throughput"]["examples_per_second"].items():
        print(f"{case:20} {value:8.1f} examples/s")
    for label, value in report["throughput"]["time ratios"].items():
        print(f"{label:28} {shown(value)}")
    for label, value in memory.items():
        print(f"{label:58} {value:8.2f}")
    print(json.dumps(report["server"], indent=1))


if __name__ == "__main__":
    main()
