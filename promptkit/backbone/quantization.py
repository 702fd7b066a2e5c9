"""Quantized frozen backbones: the ``backbone.quantization`` config section, turned into the
``quantization_config`` transformers loads with, and what a quantized model stores.

bitsandbytes (4-bit NF4 / FP4, 8-bit) and torchao's int8 configs run on the CPU as well as
on a GPU; torchao's other configs need a GPU. Prompts train through the quantized layers;
the quantized weights themselves never train (``promptkit.core.trainable`` refuses it)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from promptkit.core.config import Strict, tag, tagged_union
from promptkit.core.registry import Registry
from promptkit.errors import ConfigError

# torchao configs measured to run on the CPU (torchao 0.18); the others need a GPU.
TORCHAO_ON_CPU = ("Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig")


class BitsAndBytesQuantization(Strict):
    """bitsandbytes: 4-bit (NF4 or FP4, QLoRA's) or 8-bit (LLM.int8) weights, on CPU or GPU."""

    method: Literal["bitsandbytes"] = "bitsandbytes"
    bits: Literal[4, 8] = Field(description="4 (load_in_4bit) or 8 (load_in_8bit)")
    quant_type: Literal["nf4", "fp4"] | None = Field(
        None, description="4-bit only (bnb_4bit_quant_type): nf4 (the default) or fp4"
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="4-bit only (bnb_4bit_compute_dtype): default backbone.dtype"
    )
    use_double_quant: bool = Field(
        False, description="4-bit only (bnb_4bit_use_double_quant): quantize the scales too"
    )
    skip_modules: list[str] | None = Field(
        None, description="modules left unquantized (llm_int8_skip_modules)"
    )

    @model_validator(mode="after")
    def _four_bit_options(self) -> BitsAndBytesQuantization:
        if self.bits == 8:
            given = [
                k for k in ("quant_type", "compute_dtype", "use_double_quant") if getattr(self, k)
            ]
            if given:
                raise ValueError(
                    f"for 4-bit weights only: {', '.join(given)}; drop it, or set bits: 4."
                )
        return self

    def to_transformers(self, dtype: torch.dtype) -> Any:
        """transformers' ``BitsAndBytesConfig``; ``dtype`` is the backbone's."""
        _installed("bitsandbytes")
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=self.skip_modules)
        compute_dtype = getattr(torch, self.compute_dtype) if self.compute_dtype else dtype
        if compute_dtype == torch.float16 and not torch.cuda.is_available():
            raise ConfigError(
                "backbone.quantization.compute_dtype float16 runs on a GPU only, and there is "
                "none here: use float32 or bfloat16."
            )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type or "nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=self.use_double_quant,
            llm_int8_skip_modules=self.skip_modules,
        )


class TorchAoQuantization(Strict):
    """torchao: one of ``torchao.quantization``'s configs, by its class name."""

    method: Literal["torchao"] = "torchao"
    quant_type: str = Field(
        "Int8WeightOnlyConfig",
        description="a torchao.quantization config class, e.g. Int8WeightOnlyConfig, "
        "Int4WeightOnlyConfig (GPU)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="its keyword arguments, e.g. {group_size: 32}"
    )
    modules_to_not_convert: list[str] | None = Field(None, description="modules left unquantized")

    @field_validator("quant_type")
    @classmethod
    def _a_config_class(cls, value: str) -> str:
        if not value.isidentifier() or not value.endswith("Config"):
            raise ValueError(
                "name a torchao.quantization config class, e.g. Int8WeightOnlyConfig or "
                "Int4WeightOnlyConfig"
            )
        return value

    def to_transformers(self, dtype: torch.dtype) -> Any:
        """transformers' ``TorchAoConfig``; ``dtype`` is the backbone's (torchao keeps it)."""
        del dtype
        _installed("torchao")
        import torchao.quantization
        from torchao.core.config import AOBaseConfig
        from transformers import TorchAoConfig

        config_class = getattr(torchao.quantization, self.quant_type, None)
        if not (isinstance(config_class, type) and issubclass(config_class, AOBaseConfig)):
            raise ConfigError(
                f"backbone.quantization: torchao has no config {self.quant_type!r}: name a "
                "class of torchao.quantization, e.g. Int8WeightOnlyConfig."
            )
        if self.quant_type not in TORCHAO_ON_CPU and not torch.cuda.is_available():
            raise ConfigError(
                f"backbone.quantization: torchao's {self.quant_type} needs a GPU, and there is "
                f"none here: use {' or '.join(TORCHAO_ON_CPU)}, or bitsandbytes."
            )
        try:
            quant_type = config_class(**self.options)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"backbone.quantization.options do not fit torchao's {self.quant_type}: {err}"
            ) from None
        return TorchAoConfig(quant_type, modules_to_not_convert=self.modules_to_not_convert)


QUANTIZATIONS: Registry[type[Strict]] = Registry(
    "quantization method",
    (BitsAndBytesQuantization, TorchAoQuantization),
    key=lambda section: tag(section, "method"),
)
QuantizationConfigs = tagged_union(list(QUANTIZATIONS.values()), "method", default="bitsandbytes")


def _installed(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"backbone.quantization with {package} needs the {package} package, which is not "
            f'installed: pip install "promptkit[quantization]" (or drop backbone.quantization).'
        )


def method_of(model: nn.Module) -> str | None:
    """How a loaded model's weights are quantized ("bitsandbytes", "torchao", ...), whether
    by a config or by its checkpoint; None when they are not."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if not getattr(model, "is_quantized", False) or config is None:  # a timm model has neither
        return None
    method = config.get("quant_method") if isinstance(config, dict) else config.quant_method
    return str(getattr(method, "value", method))


def is_quantized(tensor: torch.Tensor) -> bool:
    """Whether a parameter holds quantized values (packed integers, or a quantized tensor
    subclass): such a parameter cannot train."""
    return not tensor.is_floating_point() or type(tensor) not in (torch.Tensor, nn.Parameter)


def quantized_layer_parameters(model: nn.Module) -> set[int]:
    """The ids of every parameter of the modules that hold a quantized weight (their biases
    too): what no `trainable` group may train."""
    if method_of(model) is None:
        return set()
    return {
        id(p)
        for module in model.modules()
        if any(is_quantized(p) for p in module.parameters(recurse=False))
        for p in module.parameters(recurse=False)
    }


def stored_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a quantized model stores, by name: packed weights and their scales (a
    quantized tensor subclass opened into its plain parts); a tied weight once."""
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield from _plain_parts(name, tensor.detach())


def _plain_parts(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    if type(tensor) in (torch.Tensor, nn.Parameter) or not hasattr(tensor, "__tensor_flatten__"):
        yield name, tensor
        return
    for inner in tensor.__tensor_flatten__()[0]:
        yield from _plain_parts(f"{name}.{inner}", getattr(tensor, inner))
