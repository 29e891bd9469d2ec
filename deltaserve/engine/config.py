"""Typed engine configuration. Every field documents what it controls."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from deltaserve.engine.hardware import auto_dtype

SUPPORTED_ARCHS = {"llama", "mistral", "qwen2"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """The parts of an HF config.json the Llama-family decoder needs."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    """q/k/v carry a bias (always for Qwen2; `attention_bias` for Llama)."""
    o_bias: bool
    mlp_bias: bool
    sliding_window: int | None
    eos_token_ids: list[int]
    bos_token_id: int | None
    torch_dtype: str | None

    @classmethod
    def from_dir(cls, model_dir: str) -> ModelConfig:
        path = os.path.join(model_dir, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"{model_dir!r} is not a model directory: no config.json")
        with open(path) as f:
            cfg = json.load(f)
        return cls.from_dict(cfg, generation_config_dir=model_dir)

    @classmethod
    def from_dict(cls, cfg: dict, generation_config_dir: str | None = None) -> ModelConfig:
        mt = cfg.get("model_type")
        if mt not in SUPPORTED_ARCHS:
            raise ValueError(
                f"unsupported model_type {mt!r}; supported: {', '.join(sorted(SUPPORTED_ARCHS))}"
            )
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        rope_scaling = cfg.get("rope_scaling")
        # transformers 5 moves rope settings into `rope_parameters`.
        rope_params = cfg.get("rope_parameters") or {}
        rope_theta = cfg.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = rope_params
        sliding = cfg.get("sliding_window")
        if mt == "qwen2" and not cfg.get("use_sliding_window", False):
            sliding = None
        eos = cfg.get("eos_token_id")
        eos_ids = _as_list(eos)
        if generation_config_dir:
            gpath = os.path.join(generation_config_dir, "generation_config.json")
            if os.path.isfile(gpath):
                with open(gpath) as f:
                    gen_eos = _as_list(json.load(f).get("eos_token_id"))
                eos_ids = sorted(set(eos_ids) | set(gen_eos))
        return cls(
            model_type=mt,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=(mt == "qwen2") or bool(cfg.get("attention_bias", False)),
            o_bias=(mt != "qwen2") and bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            sliding_window=sliding,
            eos_token_ids=eos_ids,
            bos_token_id=cfg.get("bos_token_id"),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        )

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim


def _as_list(v) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in (v if isinstance(v, list) else [v])]


@dataclass
class EngineConfig:
    """Everything the engine needs to start. Defaults suit a small CPU deployment."""

    model: str
    """Path to an HF model directory (config.json + safetensors + tokenizer files)."""
    dtype: str = "auto"
    """auto | float32 | bfloat16 | float16. auto: on CUDA bfloat16 (float16 where the GPU lacks
    it); on CPU bfloat16 only where the CPU computes it natively (AVX512-BF16 or AMX-BF16), else
    float32 — whatever the checkpoint's dtype (see engine/hardware.py)."""
    device: str = "auto"
    """auto | cpu | cuda."""
    quantization: str | None = None
    """Weight-only quantized base (vLLM's --quantization): none | int8 | int4 | gptq | awq.
    None: what the checkpoint's config.json `quantization_config` names (gptq, awq), else
    none. int8 (per-output-channel symmetric) and int4 (group-wise, groups of 128) quantize a
    full-precision checkpoint at load; gptq / awq load such checkpoints. Decoder projections
    only; adapters apply on top in the serving dtype (see engine/quant/)."""
    max_num_seqs: int = 64
    """Most sequences in one step (decode batch size)."""
    max_num_batched_tokens: int | None = None
    """Token budget per step (prefill + decode). Default: max(2048, max_model_len)."""
    max_model_len: int | None = None
    """Context length (prompt + generated). Default: the model's max_position_embeddings."""
    block_size: int = 16
    """Tokens per KV-cache block."""
    kv_cache_memory_bytes: int | None = None
    """Bytes for the paged KV cache. Default: 512 MiB on CPU; on CUDA, gpu_memory_utilization of
    the free memory after the model is loaded."""
    gpu_memory_utilization: float = 0.85
    """Share of free CUDA memory (after loading weights) given to the KV cache."""
    max_loras: int | None = None
    """Explicit cap on distinct adapters in one step. None: as many as the device adapter
    pool's byte budget holds (counting each adapter's real ranks), up to max_num_seqs."""
    max_lora_rank: int = 64
    """Largest LoRA rank accepted."""
    adapter_device_bytes: int | None = None
    """Byte budget of the device adapter pool. Default: with max_loras set, enough for max_loras
    adapters of max_lora_rank on every target module (so a full step always fits); else
    hardware.ADAPTER_POOL_MEMORY_SHARE (10%) of the device's memory (RAM on CPU)."""
    max_cpu_adapters: int = 128
    """Adapters kept in host memory behind the device pool (LRU)."""
    adapter_host_bytes: int = 4 << 30
    """Byte budget of the host tier."""
    proxy_memory_bytes: int | None = None
    """Bytes for proxy-tuning small models (weights + their own KV caches), shared first come
    first served by the distinct small models loaded. Default: on CUDA with the automatic KV
    budget a quarter of it (taken out of it); elsewhere, on top of kv_cache_memory_bytes, the
    larger of a quarter of the KV budget and 5% of RAM (hardware.PROXY_MEMORY_SHARE)."""
    max_waiting: int = 1024
    """Waiting-queue cap; further requests are refused with QueueFullError."""
    mixed_prefill_decode: bool = False
    """Put prefills and decodes in the same step (True) or give waiting prefills their own
    step first (False, the default: measured faster on CPU, see benchmarks/README.md)."""
    queue_policy: str = "fcfs"
    """fcfs | vtc: admission order of waiting requests. vtc is the Virtual Token Counter fair
    queue over tenants (Sheng et al., OSDI 2024; FCFS within a tenant)."""
    tenant_weights: dict[str, float] = field(default_factory=dict)
    """vtc: tenant → share weight (absent tenants weigh 1)."""
    seed: int = 0
    """Seed for requests that do not carry one."""
    num_threads: int | None = None
    """torch intra-op threads on CPU (None: torch's default)."""

    def torch_dtype(self, device: torch.device) -> tuple[torch.dtype, str]:
        """The serving dtype and why it was chosen (logged at start-up)."""
        if self.dtype != "auto":
            if self.dtype not in _DTYPES:
                raise ValueError(f"dtype must be auto|float32|bfloat16|float16, got {self.dtype!r}")
            return _DTYPES[self.dtype], "set explicitly"
        return auto_dtype(device)

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be auto|cpu|cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device(self.device)
