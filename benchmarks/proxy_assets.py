"""Variant W-proxy's assets: two proxy adapters whose experts share one anti-expert, each small
model about a fifth of the W base's parameters (W: hidden 384, 8 layers vs 768, 12), random
init, the base's vocabulary and tokenizer. Cached next to the LoRAs:

    <assets root>/proxies/models/{anti,expert-0,expert-1}/   HF model directories
    <assets root>/proxies/proxy-NN/                          deltaserve_adapter.json + copies

A quarter of the requests use a proxy adapter (round robin over the two), the rest the base.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.workload import MAX_POSITIONS, Assets

NUM_PROXIES = 2
PROXY_FRACTION = 4


def small_config(assets: Assets):
    from transformers import LlamaConfig

    s = assets.spec
    base = json.loads((assets.base_dir / "config.json").read_text())
    return LlamaConfig(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size // 2,
        intermediate_size=s.intermediate_size // 2, num_hidden_layers=max(1, s.num_layers * 2 // 3),
        num_attention_heads=max(1, s.num_heads // 2), num_key_value_heads=max(1, s.num_kv_heads // 2),
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False,
        bos_token_id=base.get("bos_token_id"), eos_token_id=base.get("eos_token_id"),
        pad_token_id=base.get("pad_token_id"),
    )


def _small_model(assets: Assets, out: Path, seed: int) -> None:
    import torch
    from transformers import LlamaForCausalLM

    if (out / "config.json").is_file():
        return
    torch.manual_seed(seed)
    model = LlamaForCausalLM(small_config(assets)).to(torch.bfloat16).eval()
    model.save_pretrained(str(out), safe_serialization=True)
    for f in assets.base_dir.iterdir():  # tokenizer files: the base's
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json",
                                                                        "generation_config.json"):
            shutil.copy(f, out / f.name)


def build_proxies(assets: Assets) -> list[Path]:
    """The proxy adapter directories, building the missing ones."""
    root = assets.root / "proxies"
    _small_model(assets, root / "models" / "anti", seed=2000)
    dirs = []
    for i in range(NUM_PROXIES):
        _small_model(assets, root / "models" / f"expert-{i}", seed=2001 + i)
        d = root / f"proxy-{i:02d}"
        if not (d / "deltaserve_adapter.json").is_file():
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(root / "models" / "anti", d / "anti")
            shutil.copytree(root / "models" / f"expert-{i}", d / "expert")
            (d / "deltaserve_adapter.json").write_text(json.dumps(
                {"kind": "proxy", "expert": "expert", "anti_expert": "anti", "alpha": 1.0}))
        dirs.append(d)
    return dirs


def proxy_plan(num_requests: int, n: int = NUM_PROXIES) -> list[int | None]:
    """Proxy index of each request (every PROXY_FRACTION-th, round robin), None for base."""
    return [(i // PROXY_FRACTION) % n if i % PROXY_FRACTION == 0 else None
            for i in range(num_requests)]
