"""config.py + family_config.py: the per-family switches read from config.json, including the
older file formats transformers still loads."""

from __future__ import annotations

import pytest

from deltaserve.engine.config import ModelConfig

_DIMS = dict(vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def test_gemma2_without_layer_types_alternates_and_caps():
    cfg = ModelConfig.from_dict({**_DIMS, "model_type": "gemma2", "sliding_window": 8,
                                 "query_pre_attn_scalar": 32, "attn_logit_softcapping": 50.0,
                                 "final_logit_softcapping": 30.0})
    assert cfg.sliding_layers == (True, False) * 3
    assert (cfg.global_window, cfg.local_window) == (None, 8)
    assert cfg.attn_scale == 32**-0.5 and cfg.attn_softcap == 50.0 and cfg.final_softcap == 30.0
    assert cfg.tie_word_embeddings and cfg.norm_plus_one and cfg.embed_scale == 8.0
    assert cfg.hidden_act == "gelu_tanh"  # Gemma2Config's default: absent from this file


def test_gemma3_old_format_pattern_and_local_base():
    """rope_theta / rope_local_base_freq / sliding_window_pattern at the top level."""
    cfg = ModelConfig.from_dict({**_DIMS, "model_type": "gemma3_text", "sliding_window": 8,
                                 "sliding_window_pattern": 3, "rope_theta": 1e6,
                                 "rope_local_base_freq": 1e4,
                                 "hidden_activation": "gelu_pytorch_tanh",
                                 "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert cfg.sliding_layers == (True, True, False) * 2
    assert (cfg.rope_theta, cfg.local_rope_theta) == (1e6, 1e4)
    assert cfg.rope_scaling["factor"] == 8.0 and cfg.qk_norm and cfg.hidden_act == "gelu_tanh"


def test_phi3_old_su_scaling_and_partial_rotary():
    cfg = ModelConfig.from_dict({**_DIMS, "model_type": "phi3", "partial_rotary_factor": 0.5,
                                 "original_max_position_embeddings": 64,
                                 "rope_scaling": {"type": "su", "short_factor": [1.0] * 4,
                                                  "long_factor": [2.0] * 4}})
    assert cfg.rope_scaling["rope_type"] == "longrope"
    assert cfg.rope_scaling["original_max_position_embeddings"] == 64
    assert cfg.rotary_dim == 8 and cfg.fused_checkpoint
    ins, outs = cfg.module_sizes()
    assert (ins["qkv_proj"], outs["qkv_proj"], outs["gate_up_proj"]) == (64, 128, 256)


def test_mixtral_has_no_dense_mlp_modules():
    cfg = ModelConfig.from_dict({**_DIMS, "model_type": "mixtral", "num_local_experts": 8,
                                 "num_experts_per_tok": 2})
    assert (cfg.num_experts, cfg.num_experts_per_tok) == (8, 2)
    assert set(cfg.module_sizes()[0]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.mark.parametrize(("extra", "match"), [
    ({"model_type": "gemma3"}, "text-only checkpoint, gemma3_text"),
    ({"model_type": "gpt2"}, "supported: gemma2, gemma3_text, llama"),
    ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "bidirectional"),
    ({"model_type": "llama", "hidden_act": "relu"}, "unsupported activation"),
])
def test_refusals_name_the_reason(extra, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict({**_DIMS, **extra})


def test_sliding_layers_without_a_window():
    """Gemma 3's layer types still pick the local RoPE base; no window, no masks."""
    gemma3 = ModelConfig.from_dict({**_DIMS, "model_type": "gemma3_text", "sliding_window": None})
    assert gemma3.sliding_layers == (True,) * 5 + (False,)
    assert (gemma3.global_window, gemma3.local_window) == (None, None)
    llama = ModelConfig.from_dict({**_DIMS, "model_type": "llama"})
    assert llama.sliding_layers == (False,) * 6
