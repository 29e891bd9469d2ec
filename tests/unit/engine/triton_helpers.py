"""Shared by the Triton kernel tests: the device they run on and small tile sizes."""

from __future__ import annotations

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_runnable_kernels(kernel) -> None:
    """On CPU the kernels and triton's own @jit helpers must have been built for the
    interpreter: TRITON_INTERPRET=1 set (tests/conftest.py) before triton was imported."""
    if DEVICE.type == "cpu":
        import triton.language as tl

        for what in (kernel, tl.zeros):
            kind = type(what).__name__
            assert kind == "InterpretedFunction", \
                f"{what}: {kind}; TRITON_INTERPRET=1 was not set before triton was imported"



def mixed_batch_runner(tmp_path, device: torch.device):
    """A tiny llama, a LoRA and a sparse delta; returns run() -> the greedy tokens of one
    batch mixing LoRA, delta and base rows on `device` (a fresh engine per call)."""
    from pathlib import Path

    from deltaserve.adapter_store.compression import compress
    from deltaserve.engine.adapters.base import AdapterRequest
    from deltaserve.engine.config import EngineConfig
    from deltaserve.engine.llm_engine import LLMEngine
    from deltaserve.engine.sampling_params import SamplingParams
    from tests.integration.engine.test_sparse_delta_vs_dense import make_finetune
    from tests.tiny import make_lora, make_model

    root = Path(tmp_path)
    hf = make_model(str(root / "base"), "llama", num_hidden_layers=1)  # interpreter time
    make_lora(hf, str(root / "lora"), r=8, targets=("q_proj", "v_proj", "down_proj"), b_scale=0.5)
    make_finetune(hf, root / "ft", seed=1)
    compress(root / "base", root / "ft", root / "delta", "dare", 0.3, seed=3, progress=False)
    lora = AdapterRequest("lora", str(root / "lora"))
    delta = AdapterRequest("delta", str(root / "delta"), kind="sparse_delta")
    prompts = [[5, 17, 99, 3], [120, 4, 66], list(range(30, 50)), [200, 1, 2], [7, 8]]
    which = [lora, None, delta, lora, delta]
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)

    def run() -> list[list[int]]:
        eng = LLMEngine(EngineConfig(model=str(root / "base"), dtype="float32",
                                     device=device.type, kv_cache_memory_bytes=16 << 20))
        return [o.outputs[0].token_ids for o in eng.generate(prompts, params, adapters=which)]

    return run


def count_kernel_calls(monkeypatch) -> list[str]:
    """Wrap the two Triton entry points; the returned list names every call."""
    from deltaserve.engine.ops import triton_lora, triton_sparse_delta

    calls: list[str] = []
    for mod, name in [(triton_lora, "lora_grouped_triton"),
                      (triton_sparse_delta, "sparse_delta_grouped_triton")]:
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name: (calls.append(_n), _r(*a)))
    return calls
