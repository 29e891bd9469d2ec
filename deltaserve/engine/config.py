"""Typed engine configuration. Every field documents what it controls."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from deltaserve.engine.family_config import GEMMA, family_fields, rope_settings, sliding_layers
from deltaserve.engine.hardware import auto_dtype

# model_type values of config.json the native engine serves (families: README "Supported base
# models"). Gemma 3 is its text-only checkpoint (Gemma3ForCausalLM, model_type gemma3_text).
SUPPORTED_ARCHS = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3",
                   "mixtral"}
CHUNKED_BUDGET = {"cpu": 512, "cuda": 2048}
"""Default step token budget with chunked prefill, per device type (EngineConfig)."""
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """The parts of an HF config.json the decoder needs: Llama's fields, then the per-family
    switches (engine/family_config.py reads them; their defaults are Llama's)."""

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
    sliding_layers: tuple[bool, ...] = ()
    """Per layer: whether it is a sliding layer, attending within `sliding_window` when set
    (Gemma alternates sliding and global layers; other families window every layer or none)
    and rotated with `local_rope_theta` when set."""
    local_rope_theta: float | None = None
    """RoPE base of the sliding layers where it differs from rope_theta (Gemma 3)."""
    qk_norm: bool = False
    """RMSNorm over each head of q and of k before RoPE (q_norm/k_norm [head_dim]; Qwen3,
    Gemma 3)."""
    norm_plus_one: bool = False
    """Norms scale by (1 + w) in float32 and round after the weight (Gemma)."""
    hidden_act: str = "silu"
    """The MLP's gate activation: silu | gelu_tanh (Gemma)."""
    embed_scale: float | None = None
    """Embeddings are multiplied by this, rounded to the model dtype as HF does (√hidden:
    Gemma)."""
    sandwich_norms: bool = False
    """A norm on the attention output and pre/post feed-forward norms (Gemma)."""
    attn_scale: float = 0.0
    """Softmax scale of q·k: head_dim^-0.5, or query_pre_attn_scalar^-0.5 (Gemma)."""
    attn_softcap: float | None = None
    """Attention logits become c·tanh(s/c) before the mask (Gemma 2's attn_logit_softcapping)."""
    final_softcap: float | None = None
    """Output logits become c·tanh(s/c) (Gemma's final_logit_softcapping)."""
    rotary_dim: int = 0
    """Leading head dimensions rotated by RoPE (head_dim × partial_rotary_factor; Phi-3)."""
    fused_checkpoint: bool = False
    """The checkpoint stores q/k/v and gate/up fused as qkv_proj / gate_up_proj (Phi-3)."""
    num_experts: int = 0
    """MoE experts per layer (Mixtral's num_local_experts); 0: a dense MLP."""
    num_experts_per_tok: int = 0
    """Experts each token is routed to (top-k of the softmax router; Mixtral)."""

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
            hint = (" (Gemma 3: serve its text-only checkpoint, gemma3_text)"
                    if mt == "gemma3" else "")
            raise ValueError(
                f"unsupported model_type {mt!r}{hint}; supported: "
                f"{', '.join(sorted(SUPPORTED_ARCHS))}"
            )
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        head_dim = cfg.get("head_dim") or hidden // heads
        rope_theta, rope_scaling, local_theta = rope_settings(mt, cfg)
        sliding = cfg.get("sliding_window")
        if mt in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False):
            sliding = None
        layers = cfg["num_hidden_layers"]
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
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", mt in GEMMA)),
            attention_bias=(mt == "qwen2") or bool(cfg.get("attention_bias", False)),
            o_bias=(mt != "qwen2") and bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            sliding_window=sliding,
            eos_token_ids=eos_ids,
            bos_token_id=cfg.get("bos_token_id"),
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            sliding_layers=sliding_layers(mt, cfg, sliding, layers),
            local_rope_theta=local_theta,
            **family_fields(mt, cfg, head_dim, hidden),
        )

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def module_sizes(self) -> tuple[dict[str, int], dict[str, int]]:
        """Input and output width of every adapter-targetable HF module: q/k/v/o and
        gate/up/down, plus the fused qkv_proj / gate_up_proj of fused checkpoints (Phi-3)."""
        h, q, kv, i = self.hidden_size, self.q_size, self.kv_size, self.intermediate_size
        ins = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q,
               "gate_proj": h, "up_proj": h, "down_proj": i}
        outs = {"q_proj": q, "k_proj": kv, "v_proj": kv, "o_proj": h,
                "gate_proj": i, "up_proj": i, "down_proj": h}
        if self.num_experts:  # Mixtral: experts replace the MLP and take no adapters
            for name in ("gate_proj", "up_proj", "down_proj"):
                del ins[name], outs[name]
        if self.fused_checkpoint:
            ins.update(qkv_proj=h, gate_up_proj=h)
            outs.update(qkv_proj=q + 2 * kv, gate_up_proj=2 * i)
        return ins, outs

    @property
    def global_window(self) -> int | None:
        """The window of the step's main attention mask: set only when every layer slides."""
        every = bool(self.sliding_layers) and all(self.sliding_layers)
        return self.sliding_window if every else None

    @property
    def local_window(self) -> int | None:
        """The window of a second mask for the sliding layers of a model that mixes sliding
        and global layers (Gemma); None otherwise."""
        mixed = any(self.sliding_layers) and not all(self.sliding_layers)
        return self.sliding_window if mixed else None


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
    """Token budget per step (decode tokens + prompt tokens). Default with chunked prefill:
    CHUNKED_BUDGET for the device (CPU 512: a 512-token chunk costs a W-sized model about as
    much as four decode steps, so running streams slow down without stalling; CUDA 2048);
    without it max(2048, max_model_len), since a whole prompt must fit one step. At least
    max_num_seqs either way."""
    enable_chunked_prefill: bool = True
    """Fill each step decode-first, then with chunks of waiting or partially computed prompts
    (vLLM v1's schedule). Off: prompts run whole in prefill steps of their own (or mixed into
    decode steps, mixed_prefill_decode)."""
    enable_prefix_caching: bool = True
    """Reuse the KV blocks of prompt prefixes already computed (prefix_cache.py)."""
    prefix_cache_scope: str = "global"
    """global | tenant. Adapter rows are always keyed by their tenant; with `tenant`, base
    rows too, so tenants never share cached K/V (no cross-tenant timing signal)."""
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
    """Without chunked prefill: put prefills and decodes in the same step (True) or give
    waiting prefills their own step first (False)."""
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

    def step_token_budget(self, device: torch.device, max_model_len: int) -> int:
        """max_num_batched_tokens, resolved and checked against the other limits."""
        if self.prefix_cache_scope not in ("global", "tenant"):
            raise ValueError(f"prefix_cache_scope must be global|tenant, got {self.prefix_cache_scope!r}")
        if self.enable_chunked_prefill:
            default = max(CHUNKED_BUDGET.get(device.type, 2048), self.max_num_seqs)
            budget = self.max_num_batched_tokens or default
            if budget < self.max_num_seqs:
                raise ValueError(f"max_num_batched_tokens ({budget}) must be at least "
                                 f"max_num_seqs ({self.max_num_seqs}): every decode needs a token")
            return budget
        budget = self.max_num_batched_tokens or max(2048, max_model_len)
        if budget < max_model_len or budget < self.max_num_seqs:
            # Without chunked prefill a longer prompt could never be scheduled.
            raise ValueError(
                f"max_num_batched_tokens ({budget}) must be at least max_model_len "
                f"({max_model_len}) and max_num_seqs ({self.max_num_seqs}) without chunked "
                "prefill"
            )
        return budget
