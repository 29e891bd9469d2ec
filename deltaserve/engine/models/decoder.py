"""The one decoder of every served family (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, Mixtral)
over packed tokens and a paged KV cache. A family is Llama plus the optional pieces its
ModelConfig switches on (engine/family_config.py): per-head q/k norms, (1 + w) norms, sandwich
norms, GELU-tanh, scaled embeddings, per-layer windows and RoPE bases, soft-capping, partial
rotary, and Mixtral's sparse mixture of experts in place of the MLP (models/moe.py).

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
from deltaserve.engine.layers.norm import make_norm
from deltaserve.engine.layers.rope import RotaryEmbedding, apply_rope
from deltaserve.engine.models.moe import SparseMoE

_ACT = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class Attention(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.scale, self.softcap = cfg.attn_scale, cfg.attn_softcap
        self.qkv_proj = AdapterLinear(
            layer_idx, "qkv", cfg.hidden_size, ["q_proj", "k_proj", "v_proj"],
            [cfg.q_size, cfg.kv_size, cfg.kv_size], cfg.attention_bias,
        )
        self.o_proj = AdapterLinear(
            layer_idx, "o", cfg.q_size, ["o_proj"], [cfg.hidden_size], cfg.o_bias
        )
        if cfg.qk_norm:  # over each head's head_dim features, before RoPE
            self.q_norm = make_norm(cfg, cfg.head_dim)
            self.k_norm = make_norm(cfg, cfg.head_dim)

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMeta, adapters):
        qkv = self.qkv_proj(x, adapters)  # [T, q + 2 kv]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        t = x.shape[0]
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q = self.q_norm(q.reshape(-1, self.head_dim)).view_as(q)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view_as(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.num_heads,
                              self.scale, self.softcap)
        return self.o_proj(out, adapters)


class MLP(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        inter = cfg.intermediate_size
        self.inter = inter
        self.act = _ACT[cfg.hidden_act]
        self.gate_up_proj = AdapterLinear(
            layer_idx, "gate_up", cfg.hidden_size, ["gate_proj", "up_proj"], [inter, inter],
            cfg.mlp_bias,
        )
        self.down_proj = AdapterLinear(
            layer_idx, "down", inter, ["down_proj"], [cfg.hidden_size], cfg.mlp_bias
        )

    def forward(self, x, adapters):
        gate, up = self.gate_up_proj(x, adapters).split([self.inter, self.inter], dim=-1)
        return self.down_proj(self.act(gate) * up, adapters)


class DecoderLayer(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.sliding = bool(cfg.sliding_layers) and cfg.sliding_layers[layer_idx]
        self.self_attn = Attention(cfg, layer_idx)
        if cfg.num_experts:
            self.block_sparse_moe = SparseMoE(cfg)
        else:
            self.mlp = MLP(cfg, layer_idx)
        h = cfg.hidden_size
        self.input_layernorm = make_norm(cfg, h)
        self.post_attention_layernorm = make_norm(cfg, h)
        self.sandwich = cfg.sandwich_norms
        if self.sandwich:  # Gemma: post_attention_layernorm normalises the attention output
            self.pre_feedforward_layernorm = make_norm(cfg, h)
            self.post_feedforward_layernorm = make_norm(cfg, h)

    def forward(self, x, rope: dict, kv_cache, meta: AttentionMeta, adapters):
        """rope: {False: (cos, sin) of global layers, True: of sliding layers}."""
        if self.sliding and meta.local is not None:
            meta = meta.local
        cos, sin = rope[self.sliding]
        a = self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta, adapters)
        if not self.sandwich:
            x = x + a
            return x + self._ffn(self.post_attention_layernorm(x), adapters)
        x = x + self.post_attention_layernorm(a)
        return x + self.post_feedforward_layernorm(
            self._ffn(self.pre_feedforward_layernorm(x), adapters))

    def _ffn(self, x, adapters):
        if hasattr(self, "block_sparse_moe"):
            return self.block_sparse_moe(x)
        return self.mlp(x, adapters)


class DecoderModel(torch.nn.Module):
    """Module names mirror HF's so checkpoints map by name (q/k/v and gate/up are fused)."""

    def __init__(self, cfg: ModelConfig, max_positions: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = torch.nn.ModuleList(
            DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = make_norm(cfg, cfg.hidden_size)
        self.build_rotary(max_positions, device)

    def build_rotary(self, max_positions: int, device: torch.device) -> None:
        """The cos/sin tables (not checkpoint tensors: rebuilt after loading on the device).
        rotary_local: Gemma 3's sliding layers' own RoPE base."""
        self.rotary = RotaryEmbedding(self.cfg, max_positions, device)
        self.rotary_local = (RotaryEmbedding(self.cfg, max_positions, device, local=True)
                             if self.cfg.local_rope_theta is not None else None)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [T, hidden]
        if self.cfg.embed_scale is not None:  # Gemma: the scale rounded to the model dtype, as HF
            x = x * torch.tensor(self.cfg.embed_scale).to(x.dtype)
        return x


class CausalLM(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.model = DecoderModel(cfg, max_positions, device)
        if not cfg.tie_word_embeddings:  # tied: the embedding matrix is the output projection
            self.lm_head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            self.lm_head.weight.requires_grad_(False)

    def out_sizes(self) -> dict[str, int]:
        """Output width of every adapter-targetable HF module (for stacking adapter weights)."""
        return self.cfg.module_sizes()[1]

    def in_sizes(self) -> dict[str, int]:
        return self.cfg.module_sizes()[0]

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
        x = m.embed(input_ids)  # [T, hidden]
        cos_sin = m.rotary.cos_sin(positions, x.dtype)  # each [T, 1, rotary_dim]
        local = m.rotary_local.cos_sin(positions, x.dtype) if m.rotary_local else cos_sin
        rope = {False: cos_sin, True: local}
        for layer, cache in zip(m.layers, kv_caches, strict=True):
            x = layer(x, rope, cache, meta, adapters)
        x = m.norm(x.index_select(0, logits_index))  # only the rows we sample from
        w = m.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(x, w)
        if self.cfg.final_softcap is not None:  # Gemma: c·tanh(logits / c), in the model dtype
            c = self.cfg.final_softcap
            logits = torch.tanh(logits / c) * c
        return logits.float()
