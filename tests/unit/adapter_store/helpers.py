"""Tiny adapter directories written directly with safetensors (no model, no peft: fast)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from deltaserve.adapter_store.validation import BaseShapes

HIDDEN, INTER, Q, KV, LAYERS = 64, 128, 64, 32, 2
SHAPES = BaseShapes(
    num_layers=LAYERS,
    in_sizes={"q_proj": HIDDEN, "k_proj": HIDDEN, "v_proj": HIDDEN, "o_proj": Q,
              "gate_proj": HIDDEN, "up_proj": HIDDEN, "down_proj": INTER},
    out_sizes={"q_proj": Q, "k_proj": KV, "v_proj": KV, "o_proj": HIDDEN,
               "gate_proj": INTER, "up_proj": INTER, "down_proj": HIDDEN},
)  # fmt: skip


def lora_tensors(rank: int = 4, modules=("q_proj", "v_proj"), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(LAYERS):
        for m in modules:
            part = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            p = f"base_model.model.model.layers.{layer}.{part}.{m}"
            out[f"{p}.lora_A.weight"] = torch.randn(rank, SHAPES.in_sizes[m], generator=g)
            out[f"{p}.lora_B.weight"] = torch.randn(SHAPES.out_sizes[m], rank, generator=g)
    return out


def write_lora(
    path: Path, rank: int = 4, seed: int = 0, tensors: dict | None = None, config: dict | None = None
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
           "target_modules": ["q_proj", "v_proj"]}  # fmt: skip
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors if tensors is not None else lora_tensors(rank, seed=seed),
              str(path / "adapter_model.safetensors"))  # fmt: skip
    return path


def write_pickle_lora(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (path / "adapter_model.bin").write_bytes(pickle.dumps({"x": 1}, protocol=4))
    return path
