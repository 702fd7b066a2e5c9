"""WNUT-16 NER on all-MiniLM-L6-v2: P-tuning v2 with a token head against full fine-tuning,
BitFit and a linear probe, in one run.

From the repository root:  python examples/ner/run.py [--set trainer.epochs=3 ...]

Fetches the offline assets (MiniLM, WNUT-16) if they are missing, trains each method on the
training tweets (wnut16.yaml plus the method's preset), and prints the entity-level F1 on the
held-out test tweets next to the share of trained parameters; the table is also written to
runs/ner/comparison.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from compare import main  # noqa: E402

METHODS = {
    "P-tuning v2 (16 prefixes)": {"preset": "ptuning_v2", "trainer": {"lr": {"prompts": 0.02}}},
    "full fine-tuning": {"preset": "full_finetune"},
    "BitFit": {"preset": "bitfit", "trainer": {"lr": {"bias": 0.005, "head": 0.005}}},
    "linear probe": {"preset": "linear_probe"},
}


if __name__ == "__main__":
    main(
        __doc__.splitlines()[0],
        HERE / "wnut16.yaml",
        METHODS,
        "f1",
        "WNUT-16 NER, all-MiniLM-L6-v2, entity-level F1 on 500 held-out tweets",
        ["minilm", "wnut16"],
    )
