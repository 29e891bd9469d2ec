"""The per-family parts of an HF config.json: which optional pieces the one decoder switches on.

Every family is the Llama decoder plus a few of: per-head q/k norms (Qwen3, Gemma 3), Gemma's
(1 + w) norms, scaled embeddings, sandwich norms, GELU-tanh, soft-capping and alternating
sliding/global layers, Phi-3's partial rotary, Mixtral's experts. `family_fields` reads them
into the ModelConfig fields of the same names (documented there).
"""

from __future__ import annotations

import math

GEMMA = {"gemma2", "gemma3_text"}
# The families whose checkpoints fuse q/k/v and gate/up (HF names qkv_proj, gate_up_proj).
FUSED_CHECKPOINT = {"phi3"}
_ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def rope_settings(mt: str, cfg: dict) -> tuple[float, dict | None, float | None]:
    """(rope_theta, rope_scaling or None, local_rope_theta or None) from either config format.

    transformers 5 writes `rope_parameters`; Gemma 3 nests it per layer type
    ({"full_attention": {...}, "sliding_attention": {...}}). Older files carry rope_theta,
    rope_scaling and Gemma 3's rope_local_base_freq at the top level.
    """
    params = cfg.get("rope_parameters") or {}
    local_theta = None
    if "full_attention" in params:
        local = params.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise ValueError("rope scaling on Gemma 3's sliding layers is not supported")
        local_theta = float(local.get("rope_theta", 10_000.0))
        params = params["full_attention"]
    elif mt == "gemma3_text":
        local_theta = float(cfg.get("rope_local_base_freq", 10_000.0))
    default_theta = 1_000_000.0 if mt == "gemma3_text" else 10_000.0
    theta = float(cfg.get("rope_theta", params.get("rope_theta", default_theta)))
    scaling = cfg.get("rope_scaling")
    if scaling is None and params.get("rope_type", params.get("type", "default")) != "default":
        scaling = params
    if scaling is not None:
        scaling = dict(scaling)
        kind = scaling.get("rope_type", scaling.get("type"))
        if mt == "phi3" and kind in ("su", "yarn"):  # Phi3Config's reading of old names
            scaling["rope_type"] = "longrope"
        # Phi-3 keeps original_max_position_embeddings at the top level of config.json.
        if "original_max_position_embeddings" in cfg:
            scaling.setdefault("original_max_position_embeddings",
                               cfg["original_max_position_embeddings"])
    return theta, scaling, local_theta


def partial_rotary_factor(cfg: dict) -> float:
    params = cfg.get("rope_parameters") or {}
    return float(cfg.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)))


def sliding_layers(mt: str, cfg: dict, window: int | None, layers: int) -> tuple[bool, ...]:
    """Which layers are sliding-window layers: from layer_types, else Gemma's patterns, else
    every layer when there is a window. Gemma 3 gives them its local RoPE base even when no
    window is set."""
    types = cfg.get("layer_types")
    if types is None and mt in GEMMA:
        # Gemma 2 alternates; Gemma 3 has one global layer every `sliding_window_pattern`.
        pattern = 2 if mt == "gemma2" else int(cfg.get("sliding_window_pattern", 6))
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                 for i in range(layers)]
    if types is None:
        return (bool(window),) * layers
    if len(types) != layers:
        raise ValueError(f"layer_types has {len(types)} entries for {layers} layers")
    return tuple(t == "sliding_attention" for t in types)


def family_fields(mt: str, cfg: dict, head_dim: int, hidden: int) -> dict:
    """The family switches of ModelConfig (see its field docs) for `cfg` of model_type `mt`."""
    gemma = mt in GEMMA
    act = (cfg.get("hidden_activation") or cfg.get("hidden_act")
           or ("gelu_pytorch_tanh" if gemma else "silu"))  # each family's config default
    if act not in _ACTS:
        raise ValueError(f"unsupported activation {act!r} (supported: {', '.join(_ACTS)})")
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("bidirectional attention (an encoder config) is not served")
    scalar = cfg.get("query_pre_attn_scalar") if gemma else None
    return dict(
        qk_norm=mt in ("qwen3", "gemma3_text"),
        norm_plus_one=gemma,
        hidden_act=_ACTS[act],
        embed_scale=math.sqrt(hidden) if gemma else None,
        sandwich_norms=gemma,
        attn_scale=float(scalar) ** -0.5 if scalar else head_dim**-0.5,
        attn_softcap=cfg.get("attn_logit_softcapping") if gemma else None,
        final_softcap=cfg.get("final_logit_softcapping") if gemma else None,
        rotary_dim=int(head_dim * partial_rotary_factor(cfg)),
        fused_checkpoint=mt in FUSED_CHECKPOINT,
        num_experts=int(cfg.get("num_local_experts", 0)) if mt == "mixtral" else 0,
        num_experts_per_tok=int(cfg.get("num_experts_per_tok", 0)) if mt == "mixtral" else 0,
    )
