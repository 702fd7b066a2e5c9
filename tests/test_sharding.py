"""What a sharded backbone takes, decided before anything is sharded; the parts that run in
one process. Whole sharded runs (two processes) are in test_processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from conftest import prompt_model

from promptkit.backbone import sharding
from promptkit.core import inference
from promptkit.errors import ConfigError


def launched_with(**plugin) -> SimpleNamespace:
    """An accelerator as `accelerate launch` with an FSDP config makes it."""
    state = SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        fsdp_plugin=FullyShardedDataParallelPlugin(**plugin),
    )
    return SimpleNamespace(state=state)


@pytest.mark.parametrize(
    ("plugin", "named"),
    [
        ({"fsdp_version": 1}, "fsdp_version: 2"),
        ({"fsdp_version": 2, "activation_checkpointing": True}, "trainer.gradient_checkpointing"),
    ],
)
def test_what_cannot_be_sharded_is_refused_before_sharding(plugin, named):
    with pytest.raises(ConfigError, match=named):
        sharding.set_up(launched_with(**plugin))


def test_deepspeed_zero3_is_refused_for_fsdp2():
    state = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        deepspeed_plugin=SimpleNamespace(zero_stage=3),
    )
    with pytest.raises(ConfigError, match="examples/accelerate/fsdp.yaml"):
        sharding.set_up(SimpleNamespace(state=state))


def test_fsdp2_is_taken():
    sharding.set_up(launched_with(fsdp_version=2))


@pytest.mark.parametrize(
    ("kind", "layers"),
    [("bert", ["BertLayer"]), ("llama", ["LlamaDecoderLayer"]), ("t5", ["T5Block"])],
)
def test_fsdp_wraps_each_backbone_layer_and_nothing_else(model_dir, kind, layers):
    model = prompt_model(
        model_dir(kind),
        template="[P1] <x>",
        head={"type": "classifier", "classes": ["a", "b"], "pool": "mean"},
    )
    # embeddings tied to an output layer stay in one unit with it
    assert model._no_split_modules == layers


def test_a_sharded_model_scores_as_many_batches_in_every_process(monkeypatch):
    model = torch.nn.Linear(1, 1)
    monkeypatch.setattr(inference, "processes", lambda: SimpleNamespace(num_processes=2))
    # 5 examples on 2 processes: the second scores 1 and 3, the first 0, 2 and 4
    assert inference._batches(model, [1, 3], 1, 5) == [[1], [3]]
    monkeypatch.setattr(inference, "is_sharded", lambda _: True)
    assert inference._batches(model, [1, 3], 1, 5) == [[1], [3], []]
    assert inference._batches(model, [0, 2, 4], 2, 5) == [[0, 2], [4]]
