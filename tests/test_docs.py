"""The configuration reference is written from the config schemas: every key says what it
does, and the reference names every section and key."""

from __future__ import annotations

import pytest

from promptkit.modalities import MODALITIES
from promptkit.runs.reference import reference, undescribed


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_config_key_says_what_it_does(modality):
    assert undescribed(MODALITIES[modality].run_schema()) == []


def test_the_reference_lists_each_section_and_its_keys():
    text = reference()
    backbone = text.split("### `backbone`")[1].split("###")[0]
    assert all(f"| `{key}` |" in backbone for key in ("name", "quantization", "device_map"))
    assert "### `prompts (placement: prefix)`" in text
    assert "### `head (type: generation)`" in text
    assert "## vision runs" in text
