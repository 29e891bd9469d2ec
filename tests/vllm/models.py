"""A tiny Llama vLLM's CPU attention accepts (head_dim 32), PEFT LoRAs of several ranks and
target subsets, and one adapter of each kind vLLM does not run (sparse_delta, proxy)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.integration.server.tiny_model import build_tokenizer

CONTEXT = 4096
"""Positions of the base model (and the server's --max-model-len)."""

LORAS = {  # name → (rank, target modules): different ranks, different subsets
    "r4-qv": (4, ["q_proj", "v_proj"]),
    "r8-all": (8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "r16-mlp": (16, ["o_proj", "gate_proj", "down_proj"]),
}
MEMBERS = ("m0", "m1")
"""Mix inventory: equal rank, alpha and targets."""
MIX = {"kind": "mix", "inventory": list(MEMBERS), "heads": 2, "routing": [[0.7, 0.3], [0.2, 0.8]]}


@dataclass
class VllmModel:
    base: Path
    adapters: Path
    spare: Path
    """LoRAs that are not in --adapter-dir (uploaded by the tests)."""


def build_base(out: Path, seed: int = 0) -> Path:
    """Random LlamaForCausalLM, 2 layers, hidden 64, 2 heads of 32 (vLLM CPU needs >= 32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT,
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, torch_dtype="float32",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():  # sharp logits: greedy tokens do not flip on rounding differences
        model.lm_head.weight.mul_(8.0)
        printable = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(chr(c))[0])
                     for c in range(32, 127)}  # fmt: skip
        for token_id in range(len(tokenizer)):
            if token_id not in printable and token_id != 1:
                model.lm_head.weight[token_id].zero_()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_lora(base: Path, out: Path, rank: int, targets: list[str], seed: int) -> Path:
    """A PEFT LoRA with random non-zero A and B (init_lora_weights=False, B scaled up)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False,
    ))  # fmt: skip
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
    peft.save_pretrained(out, safe_serialization=True)
    return out


def build_sparse_delta(out: Path, base_id: str) -> Path:
    out.mkdir(parents=True)
    save_file({
        "model.layers.0.mlp.down_proj.weight.indices": torch.tensor([0, 5, 9], dtype=torch.int64),
        "model.layers.0.mlp.down_proj.weight.values": torch.tensor([0.5, -0.5, 0.25]),
    }, str(out / "delta.safetensors"))  # fmt: skip
    (out / "deltaserve_adapter.json").write_text(json.dumps({
        "kind": "sparse_delta", "base_model": base_id, "method": "magnitude", "density": 0.01,
        "weights": "delta.safetensors",
    }))  # fmt: skip
    return out


def build_proxy(out: Path, base: Path) -> Path:
    """Expert and anti-expert: copies of the base (same vocabulary)."""
    for part in ("expert", "anti"):
        shutil.copytree(base, out / part)
    (out / "deltaserve_adapter.json").write_text(
        json.dumps({"kind": "proxy", "expert": "expert", "anti_expert": "anti"})
    )
    return out


def build_all(root: Path, base_id: str) -> VllmModel:
    base = build_base(root / "base")
    adapters, spare = root / "adapters", root / "spare"
    for i, (name, (rank, targets)) in enumerate(LORAS.items()):
        build_lora(base, adapters / name, rank, targets, seed=100 + i)
    for i, name in enumerate(MEMBERS):
        build_lora(base, adapters / name, 8, ["q_proj", "v_proj", "down_proj"], seed=200 + i)
    (adapters / "mix").mkdir()
    (adapters / "mix" / "deltaserve_adapter.json").write_text(json.dumps(MIX))
    build_sparse_delta(adapters / "sparse", base_id)
    build_proxy(adapters / "proxy", base)
    build_lora(base, spare / "upload-a", 8, ["q_proj", "o_proj"], seed=300)
    build_lora(base, spare / "upload-b", 8, ["q_proj", "o_proj"], seed=301)
    return VllmModel(base, adapters, spare)
