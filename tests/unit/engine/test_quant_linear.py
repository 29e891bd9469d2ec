"""The quantized base product and the choice of quantization method."""

from __future__ import annotations

import json

import pytest
import torch

from deltaserve.engine.models.loader import _target
from deltaserve.engine.quant.linear import INT8_MM_MAX_ROWS, QuantLinear
from deltaserve.engine.quant.loading import QuantLoader, resolve
from deltaserve.engine.quant.quantize import int4_group_size, quantize_int4, quantize_int8


def test_int8_fast_path_matches_reference():
    torch.manual_seed(0)
    dtype = torch.bfloat16
    lin = QuantLinear("int8", [quantize_int8(torch.randn(96, 64), dtype)])
    x, bias = torch.randn(INT8_MM_MAX_ROWS, 64, dtype=dtype), torch.randn(96, dtype=dtype)
    assert lin._int8_fast(x)  # the fast path is the one under test
    want = lin.forward_reference(x, bias)
    # both round the same products, in different orders: ~1 ulp of |y| ~ 8
    torch.testing.assert_close(lin(x, bias), want, atol=8e-2, rtol=8e-2)


def test_int8_fast_path_only_where_it_pays():
    """Many rows or float32 activations go through dequantise + GEMM (the kernel is slower)."""
    lin = QuantLinear("int8", [quantize_int8(torch.randn(96, 64), torch.bfloat16)])
    assert not lin._int8_fast(torch.randn(INT8_MM_MAX_ROWS + 1, 64, dtype=torch.bfloat16))
    lin32 = QuantLinear("int8", [quantize_int8(torch.randn(96, 64), torch.float32)])
    x = torch.randn(2, 64)
    assert not lin32._int8_fast(x)
    torch.testing.assert_close(lin32(x, None), lin32.forward_reference(x, None))


def test_reference_is_dequantise_then_matmul():
    torch.manual_seed(1)
    parts = [quantize_int4(torch.randn(32, 64), torch.float32),
             quantize_int4(torch.randn(16, 64), torch.float32)]
    lin = QuantLinear("int4", parts)
    x = torch.randn(5, 64)
    w = torch.cat([p.dequantize(torch.float32) for p in parts])
    torch.testing.assert_close(lin(x, None), x @ w.t())
    assert lin.out_features == 48


def _model_dir(tmp_path, qc: dict | None):
    cfg = {"model_type": "llama"}
    if qc is not None:
        cfg["quantization_config"] = qc
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def test_resolve_follows_the_checkpoint(tmp_path):
    assert resolve(None, _model_dir(tmp_path, None))[0] == "none"
    assert resolve("int8", _model_dir(tmp_path, None))[0] == "int8"
    assert resolve(None, _model_dir(tmp_path, {"quant_method": "gptq", "bits": 4}))[0] == "gptq"
    assert resolve("awq", _model_dir(tmp_path, {"quant_method": "awq"}))[0] == "awq"


@pytest.mark.parametrize("requested,qc,match", [
    ("int4", {"quant_method": "gptq"}, "gptq-quantized: use --quantization gptq"),
    ("none", {"quant_method": "awq"}, "awq-quantized"),
    ("gptq", None, "needs a gptq checkpoint"),
    ("fp8", None, "must be one of"),
    (None, {"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes NF4/FP4"),
    (None, {"quant_method": "bitsandbytes", "load_in_8bit": True}, "--quantization int8 or int4"),
    (None, {"quant_method": "fp8"}, "'fp8' in config.json is not supported"),
])
def test_resolve_refuses_clearly(tmp_path, requested, qc, match):
    with pytest.raises(ValueError, match=match):
        resolve(requested, _model_dir(tmp_path, qc))


def test_int4_groups_must_divide_the_in_features():
    assert int4_group_size(64) == 64 and int4_group_size(384) == 128
    with pytest.raises(ValueError, match="divisible by 128"):
        int4_group_size(200)


def test_packed_checkpoints_refuse_what_they_cannot_hold():
    loader = QuantLoader("gptq", {"bits": 4, "group_size": 128}, torch.float32, _target)
    assert not loader.take("model.embed_tokens.weight", lambda: torch.zeros(1))
    assert loader.take("model.layers.0.self_attn.q_proj.qweight", lambda: torch.zeros(1))
    with pytest.raises(ValueError, match="full-precision projection inside a gptq"):
        loader.take("model.layers.0.mlp.down_proj.weight", lambda: torch.zeros(1))
    for qc, match in (({"bits": 3}, "3 bits"), ({"bits": 4, "checkpoint_format": "marlin"},
                                                "'marlin'")):
        with pytest.raises(ValueError, match=match):
            QuantLoader("gptq", qc, torch.float32, _target)
    with pytest.raises(ValueError, match="4-bit GEMM"):
        QuantLoader("awq", {"bits": 4, "version": "gemv"}, torch.float32, _target)
