"""MR sentiment on all-MiniLM-L6-v2 with a CLS head: P-tuning v2 against full fine-tuning,
BitFit and a linear probe, in one run.

From the repository root:  python examples/sentiment/methods.py [--set trainer.epochs=3 ...]

Fetches the offline assets (MiniLM, MR) if they are missing, trains each method on the 2,500
training sentences (minilm_cls.yaml plus the method's preset), and prints the test accuracy
on 1,000 held-out sentences next to the share of trained parameters; the table is also
written to runs/sentiment-cls/comparison.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from compare import main  # noqa: E402

METHODS = {
    "P-tuning v2 (16 prefixes)": {"preset": "ptuning_v2"},
    "full fine-tuning": {"preset": "full_finetune"},
    "BitFit": {"preset": "bitfit"},
    "linear probe": {"preset": "linear_probe"},
}


if __name__ == "__main__":
    main(
        __doc__.splitlines()[0],
        HERE / "minilm_cls.yaml",
        METHODS,
        "accuracy",
        "MR sentiment, all-MiniLM-L6-v2 + CLS head, accuracy on 1,000 held-out sentences",
        ["minilm", "mr"],
    )
