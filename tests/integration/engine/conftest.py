"""Shared builders for engine oracle tests: tiny real models saved once per session."""

from __future__ import annotations

import os

import pytest
import torch

from deltaserve.engine.config import EngineConfig
from deltaserve.engine.llm_engine import LLMEngine
from tests.tiny import make_lora, make_model


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    model = make_model(str(d), "llama")
    return str(d), model


@pytest.fixture(scope="session")
def llama_loras(llama_dir, tmp_path_factory):
    """Five LoRAs over the tiny llama with different ranks and target subsets."""
    _, base = llama_dir
    specs = {
        "r1-qv": dict(r=1, targets=("q_proj", "v_proj")),
        "r4-all": dict(r=4, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj")),
        "r8-mlp": dict(r=8, targets=("gate_proj", "up_proj", "down_proj")),
        "r16-rs": dict(r=16, targets=("q_proj", "k_proj", "o_proj", "down_proj"), rslora=True),
        "r64-ko": dict(r=64, targets=("k_proj", "o_proj", "up_proj")),
    }
    out = {}
    for i, (name, spec) in enumerate(specs.items()):
        d = str(tmp_path_factory.mktemp(name))
        out[name] = (d, make_lora(base, d, seed=10 + i, b_scale=0.5, **spec))
    return out


# The oracle tests run on the CPU; benchmarks/gpu_checks.sh reruns them on CUDA with
# DELTASERVE_TEST_DEVICE=cuda (the transformers/PEFT oracles stay on the CPU).
TEST_DEVICE = os.environ.get("DELTASERVE_TEST_DEVICE", "cpu")


def engine_for(model_dir: str, **kw) -> LLMEngine:
    cfg = dict(model=model_dir, dtype="float32", device=TEST_DEVICE, kv_cache_memory_bytes=16 << 20,
               max_loras=8)
    cfg.update(kw)
    return LLMEngine(EngineConfig(**cfg))


def hf_logprobs(model, prompt: list[int], gen: list[int]) -> torch.Tensor:
    """log_softmax of the HF model at every generated position: [len(gen), vocab]."""
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : len(prompt) + len(gen) - 1], dim=-1)
