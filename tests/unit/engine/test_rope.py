"""layers/rope.py: inverse frequencies and attention factors equal transformers'
ROPE_INIT_FUNCTIONS for YaRN and LongRoPE (short and long factors), with partial rotary."""

from __future__ import annotations

import pytest
import torch
from transformers import Phi3Config, Qwen3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from deltaserve.engine.config import ModelConfig
from deltaserve.engine.layers.rope import RotaryEmbedding, rope_inv_freq

_DIMS = dict(vocab_size=32, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, head_dim=32,
             max_position_embeddings=512)


@pytest.mark.parametrize("extra", [
    {},
    {"beta_fast": 16, "beta_slow": 2, "truncate": False},
    {"mscale": 0.8, "mscale_all_dim": 0.5},
    {"attention_factor": 1.3},
], ids=["defaults", "betas-untruncated", "mscale", "attention-factor"])
def test_yarn_matches_transformers(extra):
    scaling = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64,
               "rope_theta": 10000.0, **extra}
    hf_cfg = Qwen3Config(**_DIMS, rope_parameters=scaling)
    want, want_attn = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, "cpu")
    got, attn = rope_inv_freq(10000.0, 32, scaling, 512)
    torch.testing.assert_close(got.float(), want, rtol=1e-6, atol=0)
    assert attn == pytest.approx(want_attn, rel=1e-9)


def _phi3(partial: float) -> tuple[Phi3Config, ModelConfig]:
    rot = int(32 * partial)
    scaling = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": partial,
               "short_factor": [1.0 + 0.1 * i for i in range(rot // 2)],
               "long_factor": [2.0 + 0.3 * i for i in range(rot // 2)]}
    hf_cfg = Phi3Config(**{**_DIMS, "hidden_size": 64, "head_dim": 32}, rope_parameters=scaling,
                        original_max_position_embeddings=64)
    return hf_cfg, ModelConfig.from_dict(hf_cfg.to_dict())


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_longrope_tables_use_short_then_long_factors(partial):
    """Positions below the original context rotate with the short factors, later ones with the
    long ones (transformers' choice for a forward of that length); mscale on both."""
    hf_cfg, cfg = _phi3(partial)
    assert cfg.rotary_dim == int(32 * partial)
    rope = RotaryEmbedding(cfg, 512, torch.device("cpu"))
    for seq_len, pos in ((None, 63), (200, 150)):
        inv, attn = ROPE_INIT_FUNCTIONS["longrope"](hf_cfg, "cpu", seq_len=seq_len)
        freqs = pos * inv.double()
        emb = torch.cat([freqs, freqs])
        torch.testing.assert_close(rope.cos[pos], (emb.cos() * attn).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rope.sin[pos], (emb.sin() * attn).float(), rtol=1e-5, atol=1e-6)
