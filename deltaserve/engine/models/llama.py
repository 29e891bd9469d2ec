"""Llama-family decoder (Llama, Mistral, Qwen2) over packed tokens and a paged KV cache.

Hidden states are packed: [T, hidden] for the T tokens of all sequences in the step, so the
projections run as one matmul each whatever the mix of prefill and decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltaserve.engine.adapters.batch import AdapterBatch
from deltaserve.engine.config import ModelConfig
from deltaserve.engine.layers.attention import AttentionMeta, paged_attention
from deltaserve.engine.layers.linear import AdapterLinear
from deltaserve.engine.layers.norm import RMSNorm
from deltaserve.engine.layers.rope import RotaryEmbedding, apply_rope


class Attention(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.qkv_proj = AdapterLinear(
            layer_idx, "qkv", cfg.hidden_size, ["q_proj", "k_proj", "v_proj"],
            [cfg.q_size, cfg.kv_size, cfg.kv_size], cfg.attention_bias,
        )
        self.o_proj = AdapterLinear(
            layer_idx, "o", cfg.q_size, ["o_proj"], [cfg.hidden_size], cfg.o_bias
        )

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMeta, adapters):
        qkv = self.qkv_proj(x, adapters)  # [T, q + 2 kv]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        t = x.shape[0]
        q = apply_rope(q.reshape(t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.reshape(t, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.num_heads)
        return self.o_proj(out, adapters)


class MLP(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        inter = cfg.intermediate_size
        self.inter = inter
        self.gate_up_proj = AdapterLinear(
            layer_idx, "gate_up", cfg.hidden_size, ["gate_proj", "up_proj"], [inter, inter],
            cfg.mlp_bias,
        )
        self.down_proj = AdapterLinear(
            layer_idx, "down", inter, ["down_proj"], [cfg.hidden_size], cfg.mlp_bias
        )

    def forward(self, x, adapters):
        gate, up = self.gate_up_proj(x, adapters).split([self.inter, self.inter], dim=-1)
        return self.down_proj(F.silu(gate) * up, adapters)


class DecoderLayer(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg, layer_idx)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, kv_cache, meta, adapters):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta, adapters)
        return x + self.mlp(self.post_attention_layernorm(x), adapters)


class LlamaModel(torch.nn.Module):
    """Module names mirror HF's so checkpoints map by name (q/k/v and gate/up are fused)."""

    def __init__(self, cfg: ModelConfig, max_positions: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = torch.nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg, max_positions, device)


class LlamaForCausalLM(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg, max_positions, device)
        if not cfg.tie_word_embeddings:  # tied: the embedding matrix is the output projection
            self.lm_head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            self.lm_head.weight.requires_grad_(False)

    def out_sizes(self) -> dict[str, int]:
        """Output width of every adapter-targetable HF module (for stacking adapter weights)."""
        c = self.cfg
        return {
            "q_proj": c.q_size, "k_proj": c.kv_size, "v_proj": c.kv_size,
            "o_proj": c.hidden_size, "gate_proj": c.intermediate_size,
            "up_proj": c.intermediate_size, "down_proj": c.hidden_size,
        }

    def in_sizes(self) -> dict[str, int]:
        c = self.cfg
        h = c.hidden_size
        return {
            "q_proj": h, "k_proj": h, "v_proj": h, "o_proj": c.q_size,
            "gate_proj": h, "up_proj": h, "down_proj": c.intermediate_size,
        }

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMeta,
        logits_index: torch.Tensor,
        adapters: AdapterBatch | None = None,
    ) -> torch.Tensor:
        """input_ids, positions: [T]; returns logits [len(logits_index), vocab] in float32."""
        m = self.model
        x = m.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = m.rotary.cos_sin(positions, x.dtype)
        for layer, cache in zip(m.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, cache, meta, adapters)
        x = m.norm(x.index_select(0, logits_index))  # only the rows we sample from
        w = m.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return F.linear(x, w).float()
