"""Tiny models of every served family and one adapter of each kind over them, with their
transformers/PEFT oracles (tests/integration/engine/test_families_vs_transformers.py)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel

from deltaserve.adapter_store.compression import compress
from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.router.mix import MixSpec
from deltaserve.router.router import build_mix
from tests.integration.engine.proxy_helpers import make_proxy
from tests.integration.engine.test_sparse_delta_vs_dense import make_finetune, merged_model
from tests.tiny import make_lora, make_model

_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
             "short_factor": [1.0, 1.5, 2.0, 3.0], "long_factor": [2.0, 3.0, 4.0, 5.0]}
# family id -> (tiny.CONFIGS arch, config overrides). Each switches on its family's parts:
# Mistral with a window shorter than the longest prompt; Gemma 2 with small caps so soft-capping bites, its own query scale; Gemma 3 with local and
# global RoPE bases (global linear-scaled); Phi-3 with partial rotary and LongRoPE; Qwen3 also
# with YaRN scaling; Mixtral's 4 experts, top-2. Prompts stay within Phi-3's original context
# (its short factors).
FAMILIES = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {"sliding_window": 8}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
    "qwen3-yarn": ("qwen3", {"rope_scaling": _YARN}),
    "gemma2": ("gemma2", {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 10.0,
                          "query_pre_attn_scalar": 24}),
    "gemma3": ("gemma3_text", {"query_pre_attn_scalar": 24, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}}),
    "phi3": ("phi3", {"rope_parameters": _LONGROPE, "original_max_position_embeddings": 64}),
    "mixtral": ("mixtral", {}),
}
SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# PEFT's names: Phi-3's checkpoint fuses q/k/v and gate/up.
_FUSED_ALL = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass
class Adapter:
    request: AdapterRequest
    oracle: object
    """The HF model whose logprobs the adapter's rows must equal, or for a proxy the
    (expert, anti-expert) pair combined with the base."""


@dataclass
class Family:
    base_dir: Path
    base: object
    adapters: dict[str, Adapter] = field(default_factory=dict)


def _targets(arch: str) -> dict[str, tuple[str, ...]]:
    if arch == "mixtral":  # experts take no LoRA: attention only
        return {"attn": ("q_proj", "v_proj"), "all": _ALL[:4], "mlp": ("k_proj", "o_proj")}
    fused = arch == "phi3"
    return {"attn": ("qkv_proj",) if fused else ("q_proj", "v_proj"),
            "all": _FUSED_ALL if fused else _ALL,
            "mlp": ("gate_up_proj", "down_proj") if fused else ("gate_proj", "up_proj", "down_proj")}


def build_family(family: str, root: Path) -> Family:
    """The base and: LoRAs of ranks 2/4/8 (two of rank 4 for the mix), a DARE sparse delta, a
    2-head mix, and proxies (full and LoRA expert) of small models of the same family."""
    arch, overrides = FAMILIES[family]
    base = make_model(str(root / "base"), arch, **overrides)
    fam = Family(root / "base", base)
    t = _targets(arch)
    specs = {"r2": (2, t["attn"]), "r4a": (4, t["all"]), "r4b": (4, t["all"]), "r8": (8, t["mlp"])}
    for i, (name, (r, targets)) in enumerate(specs.items()):
        d = root / name
        peft = make_lora(base, str(d), r=r, targets=targets, seed=20 + i, b_scale=0.5)
        fam.adapters[name] = Adapter(AdapterRequest(name, str(d)), peft)
    make_finetune(base, root / "ft", seed=1)
    compress(root / "base", root / "ft", root / "delta", "dare", 0.3, seed=3, progress=False)
    fam.adapters["delta"] = Adapter(AdapterRequest("delta", str(root / "delta"), "sparse_delta"),
                                    merged_model(base, root / "delta"))
    spec = MixSpec(("r4a", "r4b"), ((0.7, 0.3), (0.2, 0.8)))
    mix_dir = build_mix(root / "mix", spec, [root / "r4a", root / "r4b"], ["a", "b"])
    mixed = PeftModel.from_pretrained(copy.deepcopy(base), str(mix_dir)).eval()
    fam.adapters["mix"] = Adapter(AdapterRequest("mix", str(mix_dir)), mixed)
    _add_proxies(fam, arch, overrides, root)
    return fam


def _add_proxies(fam: Family, arch: str, overrides: dict, root: Path) -> None:
    small = root / "small"
    anti = make_model(str(small / "anti"), arch, seed=5, **{**overrides, **SMALL})
    expert = make_model(str(small / "expert"), arch, seed=6, **{**overrides, **SMALL})
    lora = make_lora(anti, str(small / "lora"), r=4, targets=_targets(arch)["all"], seed=7)
    for name, exp_dir, exp in (("px-full", small / "expert", expert),
                               ("px-lora", small / "lora", lora)):
        d = make_proxy(root, name, small / "anti", exp_dir)
        fam.adapters[name] = Adapter(AdapterRequest(name, str(d), "proxy"), (exp, anti))
