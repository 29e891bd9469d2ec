"""Microscopic real models for tests: HF configs → random weights → saved model directories.

Every builder is deterministic (fixed seeds) and writes a normal HF directory (config.json,
model.safetensors, byte-level tokenizer) that both transformers and deltaserve load.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

SPECIALS = ["<pad>", "<s>", "</s>"]
PAD, BOS, EOS = 256, 257, 258
VOCAB = 272  # 256 bytes + specials + spare ids


def make_tokenizer(out_dir: str) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one id per byte (0..255) plus <pad>, <s>, </s>."""
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # id of each byte's ByteLevel character = the byte value itself
    vocab = {c: _BYTE_TO_CHAR_INV[c] for c in byte_chars}
    for i, s in enumerate(SPECIALS):
        vocab[s] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(out_dir)
    return fast


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


_BYTE_TO_CHAR_INV = {c: b for b, c in _bytes_to_unicode().items()}

CONFIGS = {
    "llama": lambda **kw: LlamaConfig(**{**_COMMON, **kw}),
    "mistral": lambda **kw: MistralConfig(**{**_COMMON, "sliding_window": 4096, **kw}),
    "qwen2": lambda **kw: Qwen2Config(**{**_COMMON, **kw}),
    "qwen3": lambda **kw: Qwen3Config(**{**_COMMON, "head_dim": 16, **kw}),
    # Gemma: a window shorter than the test prompts, so sliding and global layers differ.
    "gemma2": lambda **kw: Gemma2Config(**{**_GEMMA, **kw}),
    "gemma3_text": lambda **kw: Gemma3TextConfig(**{**_GEMMA, **kw}),
    "phi3": lambda **kw: Phi3Config(**{**_COMMON, **kw}),
    "mixtral": lambda **kw: MixtralConfig(**{**_COMMON, "num_local_experts": 4, **kw}),
}
_COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False,
    rms_norm_eps=1e-6,
)
_GEMMA = {**_COMMON, "head_dim": 16, "tie_word_embeddings": True, "sliding_window": 4,
          "layer_types": ["sliding_attention", "full_attention"]}


def make_model(out_dir: str, arch: str = "llama", seed: int = 0, dtype=torch.float32, **overrides):
    """Save a random-init HF model of `arch` (a key of CONFIGS) plus tokenizer."""
    torch.manual_seed(seed)
    cfg = CONFIGS[arch](**overrides)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    _spread_weights(model, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    make_tokenizer(out_dir)
    return model.eval()


def _spread_weights(model, seed: int) -> None:
    # Random init gives near-uniform logits; wider weights make greedy choices well separated,
    # so token-exact comparisons test the math rather than float ties.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[1] ** 0.5) * 2.0)
            elif "bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def make_lora(
    base_model, out_dir: str, r: int = 8, targets=("q_proj", "v_proj"), seed: int = 0,
    alpha: int | None = None, rslora: bool = False, b_scale: float = 1.0, **extra,
):
    """Save a PEFT LoRA over `base_model` with non-zero A and B; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=list(targets),
                     init_lora_weights=False, use_rslora=rslora, **extra)
    import copy

    peft_model = get_peft_model(copy.deepcopy(base_model), cfg)
    if b_scale != 1.0:
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.mul_(b_scale)
    peft_model.save_pretrained(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    return peft_model.eval()
