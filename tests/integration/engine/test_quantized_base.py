"""Quantized bases (int8, int4 at load; GPTQ and AWQ checkpoints) with LoRAs in mixed batches
equal transformers + PEFT running the dequantised weights; the weights really shrink."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.engine.config import ModelConfig
from deltaserve.engine.layers.linear import AdapterLinear
from deltaserve.engine.models.loader import load_model
from deltaserve.engine.sampling_params import SamplingParams
from tests.integration.engine.conftest import engine_for, hf_logprobs
from tests.integration.engine.quant_assets import (
    engine_dequantised,
    write_packed,
    write_plain,
    write_sparse_delta,
)

PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [120, 4, 66], list(range(30, 58)), [200, 1, 2, 3, 9]]
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=3)
ADAPTERS = [None, "r4-all", "r8-mlp", None, "r16-rs", "r1-qv"]
PACKED = {
    "gptq4-act": ("gptq", {"bits": 4, "group_size": 32, "desc_act": True, "sym": False}),
    "gptq8-sym": ("gptq", {"bits": 8, "group_size": 64, "desc_act": False, "sym": True}),
    "awq": ("awq", {"bits": 4, "group_size": 64, "zero_point": True, "version": "gemm"}),
}


@pytest.fixture(scope="module", params=["int8", "int4", *PACKED])
def quantized(request, llama_dir, tmp_path_factory):
    """(engine over the quantized base, transformers model on its dequantised weights)."""
    src = Path(llama_dir[0])
    root = tmp_path_factory.mktemp(request.param)
    if request.param in PACKED:  # the checkpoint names its method: auto-detected
        method, qc = PACKED[request.param]
        model_dir, plain = write_packed(src, root / "packed", method, qc)
        eng = engine_for(str(model_dir), max_lora_rank=64)
        assert eng.model.quantization == method
    else:
        eng = engine_for(str(src), max_lora_rank=64, quantization=request.param)
        plain = engine_dequantised(eng.model)
    ref_dir = write_plain(src, root / "plain", plain)
    return eng, AutoModelForCausalLM.from_pretrained(str(ref_dir), dtype=torch.float32).eval()


def _oracle(ref, name, loras):
    if name is None:
        return ref
    return PeftModel.from_pretrained(copy.deepcopy(ref), loras[name][0]).eval()


def _check(out, prompt: list[int], oracle) -> None:
    """Same greedy tokens as the oracle, logprobs within float32 reordering noise."""
    gen = out.outputs[0].token_ids
    want = hf_logprobs(oracle, prompt, gen)
    assert gen == want.argmax(-1).tolist()
    got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
    want = want.gather(1, torch.tensor(gen).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(got, want, atol=3e-4, rtol=1e-4)


def test_mixed_lora_batch_matches_peft_on_dequantised_base(quantized, llama_loras):
    eng, ref = quantized
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(ADAPTERS))]
    reqs = [AdapterRequest(name=n, path=llama_loras[n][0]) if n else None for n in ADAPTERS]
    outs = eng.generate(prompts, GREEDY, adapters=reqs)
    assert eng.last_batch_adapters >= 4  # base rows and four LoRAs shared the steps
    for prompt, name, out in zip(prompts, ADAPTERS, outs, strict=True):
        _check(out, prompt, _oracle(ref, name, llama_loras))


def test_sparse_delta_applies_on_top_of_quantized_base(quantized, llama_dir, llama_loras,
                                                     tmp_path):
    """A sparse delta is added to the quantized base's output, never merged into its packed
    weights: it equals transformers on dequantised W + dense Δ, next to base and LoRA rows."""
    eng, ref = quantized
    delta_dir, dense = write_sparse_delta(Path(llama_dir[0]), tmp_path / "delta")
    merged = copy.deepcopy(ref)
    with torch.no_grad():
        for name, d in dense.items():
            merged.get_parameter(name).add_(d)
    reqs = [AdapterRequest(name="delta", path=str(delta_dir), kind="sparse_delta"), None,
            AdapterRequest(name="r4-all", path=llama_loras["r4-all"][0])]
    oracles = [merged, ref, _oracle(ref, "r4-all", llama_loras)]
    outs = eng.generate(PROMPTS[:3], GREEDY, adapters=reqs)
    for prompt, oracle, out in zip(PROMPTS[:3], oracles, outs, strict=True):
        _check(out, prompt, oracle)


def test_quantized_base_differs_from_full_precision(quantized, llama_dir):
    """The oracle above is not vacuous: the quantized weights change the base's logprobs."""
    eng, _ = quantized
    full = engine_for(llama_dir[0])
    a = eng.generate([PROMPTS[2]], GREEDY)[0].outputs[0].logprobs[0].logprob
    b = full.generate([PROMPTS[2]], GREEDY)[0].outputs[0].logprobs[0].logprob
    assert a != b


def _bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _projection_bytes(model) -> int:
    """Bytes of the decoder projections' weights (biases excluded: none in the tiny llama)."""
    return sum(_bytes(m) for m in model.modules() if isinstance(m, AdapterLinear))


def test_weight_bytes_shrink(llama_dir):
    model_dir = llama_dir[0]
    cfg = ModelConfig.from_dir(model_dir)
    load = lambda q: load_model(model_dir, cfg, 256, torch.device("cpu"), torch.bfloat16, q)  # noqa: E731
    full, int8, int4 = load("none"), load("int8"), load("int4")
    lins = [m for m in full.modules() if isinstance(m, AdapterLinear)]
    n = sum(m.weight.numel() for m in lins)  # projection weights
    rows = sum(m.weight.shape[0] for m in lins)
    groups = sum(m.weight.shape[0] * (m.in_features // min(128, m.in_features)) for m in lins)
    bf16 = _projection_bytes(full)
    assert bf16 == 2 * n
    # int8: one byte a weight + one bf16 scale a row (2 / in_features bytes a weight more).
    assert _projection_bytes(int8) == n + 2 * rows
    # int4: half a byte a weight + a bf16 scale and an int16 zero point per group of
    # min(128, in) (here in = 64 or 128: at most 4/64 bytes a weight more).
    assert _projection_bytes(int4) == n // 2 + 4 * groups
    assert 0.5 <= _projection_bytes(int8) / bf16 <= 0.5 + 1 / 64
    assert 0.25 <= _projection_bytes(int4) / bf16 <= 0.25 + 2 / 64
    # everything else (embeddings, lm_head, norms, rope tables) is untouched
    for q in (int8, int4):
        assert _bytes(q) - _projection_bytes(q) == _bytes(full) - bf16
