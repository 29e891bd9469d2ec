"""Rotary position embeddings: default, linear, Llama-3, YaRN and LongRoPE frequencies, over the
leading `rotary_dim` dimensions of each head (all of them but for Phi-3's partial rotary).

Each formula follows transformers' modeling_rope_utils (`_compute_*_parameters`).
"""

from __future__ import annotations

import math

import torch

from deltaserve.engine.config import ModelConfig


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # [dim/2]


def rope_inv_freq(theta: float, dim: int, scaling: dict | None,
                  max_pos: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [dim/2] and the attention scaling factor for cos/sin."""
    inv_freq = _base_inv_freq(theta, dim)
    scaling = scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type in (None, "default"):
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling), 1.0
    if rope_type == "yarn":
        return _yarn(theta, dim, scaling, max_pos)
    raise ValueError(f"unsupported rope_scaling type {rope_type!r} "
                     "(supported: default, linear, llama3, yarn, longrope)")


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between
    # them interpolated smoothly.
    factor = float(s["factor"])
    low, high = float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(mid, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(theta: float, dim: int, s: dict, max_pos: int) -> tuple[torch.Tensor, float]:
    """YaRN: extrapolated (original) frequencies for the fast dimensions, interpolated ones
    (divided by factor) for the slow, a linear ramp between; cos/sin scaled by mscale."""
    orig = s.get("original_max_position_embeddings") or max_pos
    factor = s.get("factor") or max_pos / orig
    attn = s.get("attention_factor")
    if attn is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attn = (_yarn_mscale(factor, m) / _yarn_mscale(factor, m_all) if m and m_all
                else _yarn_mscale(factor))
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as HF: avoids a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrap = 1 - ramp  # [dim/2]: 1 where the original frequency is kept
    inv = _base_inv_freq(theta, dim)
    return inv / factor * (1 - extrap) + inv * extrap, float(attn)


def _longrope(theta: float, dim: int, s: dict, max_pos: int):
    """LongRoPE (Phi-3 "su"): per-dimension short and long factors [dim/2] divide the base
    frequencies; one attention factor for both. Returns (short, long, factor, original ctx)."""
    orig = int(s.get("original_max_position_embeddings") or max_pos)
    factor = s.get("factor") or max_pos / orig
    attn = s.get("attention_factor")
    if attn is None:
        attn = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    base = _base_inv_freq(theta, dim)
    short = base / torch.tensor(s["short_factor"], dtype=torch.float64)
    long = base / torch.tensor(s["long_factor"], dtype=torch.float64)
    return short, long, float(attn), orig


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables [max_pos, rotary_dim] indexed by absolute position.

    local=True builds the tables of a model's sliding layers (Gemma 3's local RoPE base, no
    scaling).
    """

    def __init__(self, cfg: ModelConfig, max_positions: int, device: torch.device,
                 local: bool = False):
        super().__init__()
        dim = cfg.rotary_dim or cfg.head_dim
        theta = cfg.local_rope_theta if local else cfg.rope_theta
        scaling = None if local else cfg.rope_scaling
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
        t = torch.arange(max_positions, dtype=torch.float64)
        if kind == "longrope":
            # Per position: the short factors below the original context, the long ones from
            # there on. transformers switches a whole forward to the long factors once its
            # length passes the original context, so this equals it token by token (decode)
            # and for prompts within the original context.
            short, long, mscale, orig = _longrope(theta, dim, scaling, cfg.max_position_embeddings)
            below = (t < orig).unsqueeze(1)  # [max_pos, 1]
            freqs = torch.where(below, torch.outer(t, short), torch.outer(t, long))
        else:
            inv_freq, mscale = rope_inv_freq(theta, dim, scaling, cfg.max_position_embeddings)
            freqs = torch.outer(t, inv_freq)  # [max_pos, dim/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", (emb.cos() * mscale).float().to(device), persistent=False)
        self.register_buffer("sin", (emb.sin() * mscale).float().to(device), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [T, 1, rotary_dim] for the packed tokens' positions [T]."""
        return (
            self.cos.index_select(0, positions).unsqueeze(1).to(dtype),
            self.sin.index_select(0, positions).unsqueeze(1).to(dtype),
        )


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim] rotated by the half-split convention HF Llama uses, over its
    first rotary_dim = cos.shape[-1] dimensions (the rest pass through: partial rotary)."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :rot], cos, sin), x[..., rot:]], dim=-1)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin
