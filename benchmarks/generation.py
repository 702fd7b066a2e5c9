"""Generation speed of promptkit against the plain backbone and PEFT, as interleaved ratios.

From the repository root (after `python examples/assets.py --only smollm2 e2e`):

    python benchmarks/generation.py [--repeats 7] [--batch 8] [--new-tokens 32]

On SmolLM2-135M and the same batch of E2E prompts (cut to one length, so no case pads):
  decoding  greedy generate() of a fixed number of new tokens, KV cache on, for
            - no prompts (the backbone alone),
            - 16 key/value prefixes at every layer (promptkit `placement: prefix`; PEFT
              PrefixTuningConfig),
            - 20 soft tokens in the input (promptkit `placement: input`; PEFT
              PromptTuningConfig);
            reported as tokens/s and as ratios of promptkit's time to the backbone's and PEFT's
  training  one optimizer step (forward, backward, AdamW) of teacher-forced answers, promptkit
            against PEFT, for the same two methods
Every case runs once per round, rounds repeat after a warm-up, and each ratio is the median of
the per-round ratios with its interquartile range (benchmarks/interleaved.py). Results go to
benchmarks/results/generation.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from interleaved import ratio, rounds, shown

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

from assets import ensure  # noqa: E402

from promptkit.backbone.loading import load_backbone  # noqa: E402
from promptkit.backbone.prompting import PROMPTING_KWARG  # noqa: E402
from promptkit.core.config import validate  # noqa: E402
from promptkit.core.readers import read_rows  # noqa: E402
from promptkit.text.config import ModelConfig  # noqa: E402
from promptkit.text.decoding import carried  # noqa: E402
from promptkit.text.model import build_model  # noqa: E402

METHODS = {"prefix": 16, "input": 20}  # soft slots of each placement
PROMPT_TOKENS = 24


def promptkit_model(backbone, placement: str):
    recipe = validate(
        ModelConfig,
        {
            "backbone": {"name": backbone.name},
            "template": f"[P*{METHODS[placement]}] <x>",
            "head": {"type": "generation"},
            "prompts": {"placement": placement, "init": "random"},
        },
        "benchmark",
    )
    return build_model(recipe, backbone=backbone)


def peft_model(backbone, placement: str):
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    kind = PrefixTuningConfig if placement == "prefix" else PromptTuningConfig
    config = kind(task_type="CAUSAL_LM", num_virtual_tokens=METHODS[placement])
    return get_peft_model(copy.deepcopy(backbone.model), config)


def decoding(args, backbone, ids):
    """Seconds per generate() call of each case."""
    options = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": backbone.tokenizer.pad_token_id or 0,
    }
    mask = torch.ones_like(ids)
    cases = {
        "plain": lambda: backbone.model.generate(input_ids=ids, attention_mask=mask, **options)
    }
    for placement in METHODS:
        ours = promptkit_model(backbone, placement).eval()
        soft = torch.arange(METHODS[placement]).expand(len(ids), -1)
        if placement == "prefix":
            soft = soft[:, :0]
        batch = {
            "input_ids": torch.cat([torch.zeros_like(soft), ids], 1),
            "slot_ids": torch.cat([soft, torch.full_like(ids, -1)], 1),
            "attention_mask": torch.ones(len(ids), soft.shape[1] + ids.shape[1], dtype=torch.long),
        }

        def ours_call(model=ours, batch=batch):
            with torch.no_grad():
                kwargs = model.placement(batch, model.prompts())
                kwargs.pop("position_ids", None)
                with carried(model.lm, kwargs.pop(PROMPTING_KWARG, None)):
                    return model.lm.generate(**kwargs, **options)

        peft = peft_model(backbone, placement).eval()
        cases[f"promptkit {placement}"] = ours_call
        cases[f"peft {placement}"] = lambda peft=peft: peft.generate(
            input_ids=ids, attention_mask=mask, **options
        )
    with torch.no_grad():
        return rounds(cases, args.repeats)


def training(args, backbone, ids):
    """Seconds per optimizer step of each case (loss on the last half of each row)."""
    labels = ids.clone()
    labels[:, : ids.shape[1] // 2] = -100
    cases = {}
    for placement in METHODS:
        ours = promptkit_model(backbone, placement).train()
        ours_batch = ours.collate(
            ours.encode(
                ours.examples([backbone.tokenizer.decode(row[:12]) for row in ids]),
                [backbone.tokenizer.decode(row[12:]) for row in ids],
            )
        )
        peft = peft_model(backbone, placement).train()
        for name, model, step in (
            (
                f"promptkit {placement}",
                ours,
                lambda m=ours, b=ours_batch: m.task.loss(m(b), b["labels"]),
            ),
            (f"peft {placement}", peft, lambda m=peft: m(input_ids=ids, labels=labels).loss),
        ):
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

            def one_step(step=step, optimizer=optimizer):
                optimizer.zero_grad()
                step().backward()
                optimizer.step()

            cases[name] = one_step
    return rounds(cases, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    cache = ensure(["smollm2", "e2e"])
    torch.manual_seed(0)
    backbone = load_backbone(str(cache / "smollm2-135m"))
    texts = [row["input"] for row in read_rows(str(cache / "e2e" / "test.jsonl"))]
    encoded = backbone.tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = [row[:PROMPT_TOKENS] for row in encoded if len(row) >= PROMPT_TOKENS][: args.batch]
    ids = torch.tensor(rows)

    decode = decoding(args, backbone, ids)
    train = training(args, backbone, ids)
    tokens = args.batch * args.new_tokens
    report = {"device": "CPU", "threads": torch.get_num_threads(), "settings": vars(args)}
    report["tokens_per_second"] = {k: tokens / sorted(v)[len(v) // 2] for k, v in decode.items()}
    report["decoding"] = {
        placement: {
            "promptkit / no prompts": ratio(decode[f"promptkit {placement}"], decode["plain"]),
            "promptkit / PEFT": ratio(
                decode[f"promptkit {placement}"], decode[f"peft {placement}"]
            ),
        }
        for placement in METHODS
    }
    report["training_step"] = {
        placement: {
            "promptkit / PEFT": ratio(train[f"promptkit {placement}"], train[f"peft {placement}"])
        }
        for placement in METHODS
    }
    out = REPO / "benchmarks" / "results" / "generation.json"
    out.write_text(json.dumps(report, indent=2))
    print(
        f"tokens/s: {json.dumps({k: round(v, 1) for k, v in report['tokens_per_second'].items()})}"
    )
    for kind in ("decoding", "training_step"):
        for placement, ratios in report[kind].items():
            for label, value in ratios.items():
                print(f"{kind:14} {placement:7} {label:24} {shown(value)}")


if __name__ == "__main__":
    main()
