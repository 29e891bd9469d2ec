"""Builders for proxy-tuning tests: small models sharing the tiny base's vocab and tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tests.tiny import make_lora, make_model

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1)


def make_proxy(root: Path, name: str, anti_src: Path, expert_src: Path, alpha=None) -> Path:
    """A proxy adapter directory holding copies of the expert and anti-expert directories."""
    d = root / name
    shutil.copytree(anti_src, d / "anti")
    shutil.copytree(expert_src, d / "expert")
    cfg = {"kind": "proxy", "expert": "expert", "anti_expert": "anti"}
    if alpha is not None:
        cfg["alpha"] = alpha
    (d / "deltaserve_adapter.json").write_text(json.dumps(cfg))
    return d


def small_models(root: Path):
    """anti (seed 5), a full expert (seed 6) and a LoRA expert on the anti: (dirs, HF models)."""
    anti = make_model(str(root / "anti"), "llama", seed=5, **SMALL)
    expert = make_model(str(root / "expert"), "llama", seed=6, **SMALL)
    lora = make_lora(anti, str(root / "expert_lora"), r=4,
                     targets=("q_proj", "v_proj", "down_proj"), seed=7)
    return {"anti": (root / "anti", anti), "expert": (root / "expert", expert),
            "lora": (root / "expert_lora", lora)}


def proxy_logprobs(base, expert, anti, prompt: list[int], gen: list[int], alpha: float):
    """log_softmax(s_base + α(s_expert − s_anti)) at each generated position: [len(gen), V]."""
    ids = torch.tensor([prompt + gen])
    sl = slice(len(prompt) - 1, len(prompt) + len(gen) - 1)
    with torch.no_grad():
        s = [m(ids).logits[0].float()[sl] for m in (base, expert, anti)]
    return torch.log_softmax(s[0] + alpha * (s[1] - s[2]), dim=-1)
