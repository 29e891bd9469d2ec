"""HF PEFT's mixed-adapter batch generation on workload W: the baseline deltaserve is compared to.

One `generate(input_ids, attention_mask, adapter_names=[...])` call over all requests at once
(batch = num_requests), greedy, exactly gen_len new tokens per row. W-base runs the plain
transformers model (no PEFT wrapper), as a user without adapters would.
"""

from __future__ import annotations

import time

from benchmarks import machine
from benchmarks.common import (
    DELTA_VARIANTS,
    PROXY_VARIANTS,
    QUANTIZED_VARIANTS,
    SAMPLE_REQUESTS,
    RunResult,
    adapters_in,
    free_memory,
    round_robin,
    sync,
    timed_repeats,
)
from benchmarks.workload import PAD_ID, Assets

WARMUP_TOKENS = 2


def load_model(assets: Assets, k: int, device: str = "cpu", dtype=None):
    """The base on `device` in `dtype` (default: the device's native dtype, see
    benchmarks/machine.py), wrapped by PEFT with adapters 0..k-1 loaded when k > 0."""
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = machine.native_dtype(device)[0]
    model = AutoModelForCausalLM.from_pretrained(str(assets.base_dir), dtype=dtype)
    if k > 0:
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            model, str(assets.adapter_dir(0)), adapter_name=assets.adapter_name(0)
        )
        for i in range(1, k):
            model.load_adapter(str(assets.adapter_dir(i)), adapter_name=assets.adapter_name(i))
    return model.to(device).eval()


def _generate(
    model, prompts: list[list[int]], names: list[str] | None, gen_len: int, device: str = "cpu"
):
    """Greedy batch generation; returns generated ids [batch, gen_len] (prompt stripped)."""
    import torch

    # All prompts have the same length, so no padding: input_ids [batch, prompt_len].
    input_ids = torch.tensor(prompts, dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    kwargs = {"adapter_names": names} if names is not None else {}
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=gen_len,
            min_new_tokens=gen_len,  # suppresses EOS: every row yields exactly gen_len tokens
            do_sample=False,
            pad_token_id=PAD_ID,
            **kwargs,
        )
    return out[:, input_ids.shape[1] :]  # [batch, gen_len]


def run(
    assets: Assets, variant: str, prompts: list[list[int]], gen_len: int, device: str = "cpu",
    repeats: int = 1,
) -> RunResult:
    """Measure generated tokens / wall second (prefill included) for one variant: the median
    of `repeats` timed generate calls."""
    k = adapters_in(variant, assets.spec.num_adapters)
    res = RunResult(
        engine="peft", variant=variant, num_adapters=k, num_requests=len(prompts),
        prompt_len=len(prompts[0]), gen_len=gen_len,
    )
    if variant in DELTA_VARIANTS:
        res.error = "PEFT cannot serve sparse-delta adapters (no baseline for this variant)"
        return res
    if variant in PROXY_VARIANTS:
        res.error = "PEFT cannot serve proxy adapters (no baseline for this variant)"
        return res
    if variant in QUANTIZED_VARIANTS:
        res.error = "no PEFT row for a quantized base (compare with PEFT's W)"
        return res
    model = load_model(assets, k, device)
    names = None
    if k > 0:
        names = [assets.adapter_name(i) for i in round_robin(len(prompts), k)]
    # Tiny warm-up (first rows, 2 tokens): one-time allocator/dispatch costs stay out of timing.
    # Same warm-up as the deltaserve runner: the timed batch, a few tokens.
    _generate(model, prompts, names, WARMUP_TOKENS, device)

    def once(model=model) -> tuple[int, float]:
        sync(device)  # CUDA: earlier kernels are done before the clock starts
        start = time.perf_counter()
        gen = _generate(model, prompts, names, gen_len, device)
        sync(device)  # ... and the timed generate's are done before it stops
        seconds = time.perf_counter() - start
        res.sample_tokens = gen[:SAMPLE_REQUESTS].tolist()
        return int(gen.numel()), seconds

    timed_repeats(res, repeats, once)
    del model, once  # the model's memory is free before the next row loads its own
    free_memory(device)
    return res
