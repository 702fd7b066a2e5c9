"""Backbones: load a Hugging Face model and its tokenizer, know its kind, fingerprint it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from promptkit.backbone.dispatch import (
    input_device,
    is_dispatched,
    loading_options,
    placement_summary,
    stored,
    weights,
)
from promptkit.backbone.layers import layers_in_order
from promptkit.backbone.quantization import QuantizationConfigs, method_of, stored_tensors
from promptkit.core import hub
from promptkit.core.progress import Report, say, timed
from promptkit.errors import ConfigError
from promptkit.tasks.base import IGNORED

BackboneKind = Literal["masked_lm", "causal_lm", "seq2seq_lm", "encoder"]
_LOADERS = {
    "masked_lm": AutoModelForMaskedLM,
    "causal_lm": AutoModelForCausalLM,
    "seq2seq_lm": AutoModelForSeq2SeqLM,
    "encoder": AutoModel,
}
_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
_FINGERPRINT_CHUNK = 1 << 22  # values hashed at a time
FINGERPRINT_SCHEME = 2  # what a fingerprint hashes: see ``fingerprint``


@dataclass
class Backbone:
    """A frozen pretrained model with its tokenizer.

    ``kind`` is "masked_lm", "causal_lm" or "seq2seq_lm" (an LM head: verbalizers, text
    answers) or "encoder".
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: BackboneKind
    name: str

    @property
    def is_causal(self) -> bool:
        """Whether the answer is read as a next-token prediction."""
        return self.kind == "causal_lm"

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether an encoder reads the prompt and a decoder writes the answer."""
        return self.kind == "seq2seq_lm"

    @property
    def hidden_size(self) -> int:
        """Width of the input embeddings and hidden states."""
        return self.model.get_input_embeddings().embedding_dim

    @property
    def pad_id(self) -> int:
        """The id padding takes (the tokenizer's, or 0 where it has none: padded positions
        are masked out)."""
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else pad

    @property
    def device(self) -> torch.device:
        """Where the backbone takes its inputs (and its prompts and head run)."""
        return input_device(self.model)

    @property
    def dispatched(self) -> bool:
        """Whether a device map spreads the backbone over devices, CPU memory or disk."""
        return is_dispatched(self.model)

    @property
    def input_embeddings(self) -> torch.Tensor:
        """The input embedding matrix ``[V, D]`` (read in where it is kept if offloaded)."""
        return stored(self.model.get_input_embeddings())

    @property
    def output_embeddings(self) -> torch.Tensor:
        """The LM head's matrix ``[V, D]``, else the input embeddings."""
        head = self.model.get_output_embeddings()
        return self.input_embeddings if head is None else stored(head)

    @property
    def has_lm_head(self) -> bool:
        """Whether the model predicts tokens (what a verbalizer needs)."""
        return self.kind != "encoder"

    def fingerprint(self, scheme: int = FINGERPRINT_SCHEME) -> str:
        """A hash of the architecture and every weight: the same only for the same backbone,
        so trained prompts are never loaded onto another one unnoticed (``scheme`` 1, of
        runs saved by promptkit 0.1, hashed the input embeddings only). A quantized
        backbone's hashes its quantization method and its weights as stored, so it never
        matches the full backbone it was quantized from. A dispatched backbone's is the
        whole one's: offloaded weights are read where they are kept."""
        config = self.model.config
        tag = ";".join(
            f"{key}={getattr(config, key, None)}"
            for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
        )
        if scheme == 1:
            return fingerprint(tag, [("", self.input_embeddings)], scheme)
        tag = f"{type(self.model).__name__};{tag}"
        if self.quantization is not None:  # the weights as stored: packed, with their scales
            return fingerprint(f"{tag};quantized={self.quantization}", stored_tensors(self.model))
        return fingerprint(tag, weights(self.model))

    @property
    def quantization(self) -> str | None:
        """How the weights are quantized ("bitsandbytes", "torchao", ...), None if not."""
        return method_of(self.model)


def fingerprint(
    tag: str,
    tensors: Iterable[tuple[str, torch.Tensor]],
    scheme: int = FINGERPRINT_SCHEME,
) -> str:
    """A short hash of a description and of named tensors: their names, shapes and values
    rounded to bfloat16 (so float32 and bfloat16 copies of one backbone agree, and a change
    of any weight beyond bfloat16's precision shows). Scheme 1 hashed float32 values alone.

    Values are hashed a chunk at a time, straight from their buffer: a large matrix is never
    copied whole."""
    digest = hashlib.sha256(tag.encode())
    for name, tensor in tensors:
        if scheme != 1:
            digest.update(f";{name}{tuple(tensor.shape)}".encode())
        for chunk in tensor.detach().reshape(-1).split(_FINGERPRINT_CHUNK):
            values = chunk.float() if scheme == 1 else chunk.to(torch.bfloat16).view(torch.int16)
            digest.update(values.cpu().numpy())
    return digest.hexdigest()[:16]


def detect_kind(config: PretrainedConfig) -> BackboneKind:
    """A model's kind from the architectures its config names."""
    architectures = config.architectures or []
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "masked_lm"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal_lm"
    if config.is_encoder_decoder:
        return "seq2seq_lm"
    return "encoder"


def load_backbone(
    name: str,
    kind: BackboneKind | Literal["auto"] = "auto",
    dtype: str = "float32",
    quantization: QuantizationConfigs | None = None,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | None = None,
) -> Backbone:
    """Load a backbone from a hub id or a local folder.

    Args:
        name: hub id or path.
        kind: "auto" reads it from the config's architectures.
        dtype: "float32", "bfloat16", "float16" or "float64".
        quantization: how to quantize the weights while loading (a
            ``promptkit.backbone.quantization`` config); a checkpoint quantized already loads as it
            is, without one.
        device_map: where each layer goes ("auto", "balanced", "sequential" or a mapping of
            module names to a GPU index, "cpu" or "disk"), through accelerate; None loads
            the whole model into one device.
        max_memory: the most each device may hold under a device map ({0: "20GiB",
            "cpu": "60GiB"}); what does not fit goes to disk.
        offload_folder: where weights offloaded to disk are written when the checkpoint
            cannot be read in place (safetensors checkpoints are).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a backbone is named by a folder or hub id, not {name!r}.")
    quantized = {} if quantization is None else _quantized(name, quantization, dtype)
    placed = loading_options(device_map, max_memory, offload_folder)
    loading = timed(f"loading backbone {name} ({dtype})")
    with loading, _bars_as_shown(), _loading(name) as options:
        tokenizer, detected = load_tokenizer(name)
        if kind not in ("auto", "encoder", detected):
            raise ConfigError(
                f"backbone {name!r} is a {detected} checkpoint, not a {kind}: set backbone.kind "
                f"to {detected} (or auto, or encoder to use its hidden states alone)."
            )
        kind = detected if kind == "auto" else kind
        try:
            model, info = _LOADERS[kind].from_pretrained(
                name,
                dtype=_DTYPES[dtype],
                output_loading_info=True,
                **quantized,
                **placed,
                **options,
            )
        except ValueError as err:
            if quantized and "dispatched on the CPU or the disk" in str(err):
                raise ConfigError(_QUANTIZED_OFFLOAD.format(name=name)) from None
            raise
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ConfigError(
            f"backbone {name!r} has no weights for {len(missing)} of the parameters of a "
            f"{kind} (e.g. {missing[0]}): they would start random. Use a checkpoint that has "
            "them, or another backbone.kind."
        )
    if is_dispatched(model):
        say(placement_summary(model))
    return Backbone(model, tokenizer, kind, name)


_QUANTIZED_OFFLOAD = (
    "backbone {name!r}: backbone.max_memory leaves no room for the quantized layers on the "
    "main device, and quantized layers are not offloaded to the CPU or disk: give the device "
    "more room in max_memory, or drop backbone.quantization to offload the full weights."
)


def parameter_count(name: str, kind: BackboneKind | Literal["auto"] = "auto") -> int:
    """How many parameters a backbone has, from its config alone: the model is built on
    the meta device, so no weight is read or allocated."""
    with _loading(name) as options:
        config = AutoConfig.from_pretrained(name, **options)
        loader = _LOADERS[detect_kind(config) if kind == "auto" else kind]
        with torch.device("meta"):
            model = loader.from_config(config)
    return sum(p.numel() for p in model.parameters())


def dtype_bytes(dtype: str) -> int:
    """Bytes per parameter of a ``backbone.dtype``."""
    return _DTYPES[dtype].itemsize


def _quantized(name: str, quantization: QuantizationConfigs, dtype: str) -> dict[str, object]:
    """The ``quantization_config`` option to load ``name`` with; a checkpoint that is
    quantized already cannot be quantized again."""
    options = {"quantization_config": quantization.to_transformers(_DTYPES[dtype])}
    with _loading(name) as local:
        stored = getattr(AutoConfig.from_pretrained(name, **local), "quantization_config", None)
    if stored is not None:
        method = stored["quant_method"] if isinstance(stored, dict) else stored.quant_method
        raise ConfigError(
            f"backbone {name!r} is quantized already ({method}, by its checkpoint): drop "
            "backbone.quantization, it loads quantized as it is."
        )
    return options


def compile_layers(model: PreTrainedModel) -> None:
    """``torch.compile`` each transformer layer's forward, in place (layers compiled already
    are left as they are). The layers' hooks stay outside the compiled code, so prompts that
    enter through them work as before."""
    layers = layers_in_order(model)
    if not layers:
        raise ConfigError(
            f"backbone.compile: cannot find the layers of {type(model).__name__} to compile: "
            "set backbone.compile: false."
        )
    for layer in layers:
        if "forward" not in vars(layer):  # its own compiled forward already
            layer.forward = torch.compile(layer.forward)


def load_tokenizer(name: str) -> tuple[PreTrainedTokenizerBase, BackboneKind]:
    """A model's tokenizer and its kind, from a hub id or a local folder."""
    with _loading(name) as options:
        config = AutoConfig.from_pretrained(name, **options)
        return AutoTokenizer.from_pretrained(name, **options), detect_kind(config)


@contextmanager
def _bars_as_shown() -> Iterator[None]:
    """transformers' own loading bar shows only where promptkit's bars show (in a
    terminal); elsewhere the lines of ``timed`` say what loads."""
    from transformers.utils import logging

    hidden = logging.is_progress_bar_enabled() and not Report().shows_bar
    if hidden:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if hidden:
            logging.enable_progress_bar()


@contextmanager
def _loading(name: str) -> Iterator[dict[str, bool]]:
    """Load from a local folder, the hub cache, or the hub if it can be reached; anything
    else is a ConfigError at once (not after minutes of retries)."""
    if hub.looks_local(name):
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            what = "no such folder" if not folder.exists() else "it has no config.json"
            raise ConfigError(f"backbone {name!r}: {what}; give a transformers model folder.")
        options = {}
    else:
        cached = _cached(name)
        if not cached and not hub.reachable():
            raise ConfigError(
                f"backbone {name!r}: no such local folder, not in the Hugging Face cache, and "
                "the hub cannot be reached from here. Check the name for a typo, or give a "
                "local model folder."
            )
        options = {"local_files_only": cached}
    try:
        yield options
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"backbone {name!r} cannot be loaded: {err}") from None
    except ImportError as err:  # a quantized checkpoint whose package is not installed
        raise ConfigError(f"backbone {name!r} needs a package to load: {err}") from None


def _cached(name: str) -> bool:
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True


@contextmanager
def reading_at(
    model: PreTrainedModel, positions: torch.Tensor, kept: list[torch.Tensor] | None = None
) -> Iterator[None]:
    """Within this context, the model's head sees only the hidden states at ``positions``
    (``[B]``, or ``[B, K]`` for several per sequence); ``kept``, if given, receives the
    hidden states of every position.

    The LM head is applied to whatever the base model returns, so gathering the positions
    that are read before it avoids computing logits over the whole vocabulary for every
    token."""
    index = positions.view(positions.shape[0], -1)

    def gather(_module, _args, output):
        hidden = output[0]
        if kept is not None:
            kept.append(hidden)
        rows = index.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        output["last_hidden_state"] = hidden.gather(1, rows)
        return output

    handle = _stack_before_head(model).register_forward_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def _stack_before_head(model: PreTrainedModel) -> torch.nn.Module:
    """The module whose output the LM head reads: the decoder of an encoder-decoder."""
    return model.get_decoder() if model.config.is_encoder_decoder else model.base_model


def encoder_states(model: PreTrainedModel, inputs: dict[str, object]) -> torch.Tensor:
    """The last hidden states over the input (an encoder-decoder's encoder's)."""
    if model.config.is_encoder_decoder:
        return model.get_encoder()(**inputs).last_hidden_state
    return model.base_model(**inputs).last_hidden_state


def answer_logits(
    model: PreTrainedModel, inputs: dict[str, object], labels: torch.Tensor
) -> torch.Tensor:
    """Logits ``[N, V]`` where ``labels`` (``[B, T]``) hold a target, in row order.

    A decoder-only model's ``labels`` are aligned with its input (the answer follows the
    prompt): only the labelled positions go through the LM head. An encoder-decoder's are
    the decoder's targets, fed shifted right (teacher forcing)."""
    targeted = labels != IGNORED
    if model.config.is_encoder_decoder:
        decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
        return model(**inputs, decoder_input_ids=decoder_ids).logits[targeted]
    counts = targeted.sum(-1)
    positions = torch.zeros(len(labels), int(counts.max()), dtype=torch.long, device=labels.device)
    kept = torch.arange(positions.shape[1], device=labels.device) < counts.unsqueeze(-1)
    positions[kept] = targeted.nonzero()[:, 1]
    with reading_at(model, positions):
        return model(**inputs).logits[kept]


def first_answer_logits(
    model: PreTrainedModel, inputs: dict[str, object], lead: Sequence[int] = ()
) -> torch.Tensor:
    """An encoder-decoder's logits ``[B, V]`` for the first token of the answer, once the
    decoder has read its start token and ``lead`` (T5's sentinel that opens the span)."""
    batch = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
    start = [model.config.decoder_start_token_id, *lead]
    decoder_ids = torch.tensor([start] * batch, dtype=torch.long, device=input_device(model))
    return model(**inputs, decoder_input_ids=decoder_ids).logits[:, -1]
