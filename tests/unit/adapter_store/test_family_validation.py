"""Store validation of adapters over the newer families: Phi-3's fused modules (PEFT's
qkv_proj / gate_up_proj) against the base's own shapes, and Mixtral expert LoRA refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deltaserve.adapter_store.errors import InvalidAdapterError
from deltaserve.adapter_store.validation import BaseShapes, Limits, validate_adapter_dir
from deltaserve.engine.config import ModelConfig
from tests.unit.adapter_store.helpers import SHAPES, write_lora

PHI3 = BaseShapes.from_model_config(ModelConfig.from_dict(dict(
    model_type="phi3", vocab_size=32, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)))


def _fused_lora(path: Path) -> Path:
    t = {}
    for layer in range(2):
        p = f"base_model.model.model.layers.{layer}"
        t[f"{p}.self_attn.qkv_proj.lora_A.weight"] = torch.randn(4, 64)
        t[f"{p}.self_attn.qkv_proj.lora_B.weight"] = torch.randn(128, 4)  # q 64 + k 32 + v 32
        t[f"{p}.mlp.gate_up_proj.lora_A.weight"] = torch.randn(4, 64)
        t[f"{p}.mlp.gate_up_proj.lora_B.weight"] = torch.randn(256, 4)
    return write_lora(path, tensors=t, config={"target_modules": ["qkv_proj", "gate_up_proj"]})


def test_phi3_fused_lora_validates_against_phi3_shapes(tmp_path: Path) -> None:
    v = validate_adapter_dir(_fused_lora(tmp_path / "a"), PHI3, Limits(max_rank=16))
    assert (v.kind, v.rank, sorted(v.target_modules)) == ("lora", 4, ["gate_up_proj", "qkv_proj"])


def test_fused_lora_refused_on_an_unfused_base(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapterError, match="no module (qkv|gate_up)_proj"):
        validate_adapter_dir(_fused_lora(tmp_path / "a"), SHAPES, Limits(max_rank=16))


def test_expert_lora_as_target_parameters_refused(tmp_path: Path) -> None:
    path = write_lora(tmp_path / "a", config={"target_parameters": ["experts.gate_up_proj"]})
    with pytest.raises(InvalidAdapterError, match="target_parameters"):
        validate_adapter_dir(path, SHAPES, Limits(max_rank=16))
