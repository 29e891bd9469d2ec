"""The matmul-only bound of workload W, measured on this machine in the benchmark's own run.

What is timed (t_R): one pass of `torch.nn.functional.linear(x, W)` over every linear layer of
the W model — q, k, v, o, gate, up, down of each decoder layer plus lm_head — with x of R rows
(R = the number of concurrent requests, 64) and W the layer's weight [d_out, d_in], both random
and in the serving dtype; a distinct weight tensor per layer, as in the model, so the weights
stream from memory as they do when serving. Nothing else is timed: no embedding lookup,
attention, norms, activations, rotary embedding, sampling, adapter math or Python step loop.
t_R is the median of `repeats` passes after `warmup` untimed ones, under torch.inference_mode.

The bound counts a request batch as passes of R rows: its prefill of R × P prompt tokens as P
passes and its G decode steps as G passes (the issue's "64 prefill-equivalent + 64 decode" for
R = P = G = 64), so

    bound tok/s = R·G / ((P + G) · t_R)        (= 4096 / (128 · t64) for W)

No engine that runs the whole model can exceed it (prefill as one 4096-row matmul could be a
little more efficient per row than 64 passes of 64 rows; that is the only approximation).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from benchmarks.workload import ModelSpec


def linear_shapes(spec: ModelSpec) -> list[tuple[int, int]]:
    """(d_out, d_in) of every linear layer of the model of `spec`, lm_head last."""
    head_dim = spec.hidden_size // spec.num_heads
    h, kv, inter = spec.hidden_size, spec.num_kv_heads * head_dim, spec.intermediate_size
    layer = [(h, h), (kv, h), (kv, h), (h, h),  # q, k, v, o
             (inter, h), (inter, h), (h, inter)]  # gate, up, down
    return layer * spec.num_layers + [(spec.vocab_size, h)]


def passes(prompt_len: int, gen_len: int) -> int:
    """Passes of R rows a batch of R requests needs: P prefill-equivalent + G decode."""
    return prompt_len + gen_len


def bound_tok_s(t_pass: float, rows: int, prompt_len: int, gen_len: int) -> float:
    """Generated tokens per second if the batch cost nothing but its linear layers."""
    if t_pass <= 0:
        raise ValueError(f"pass time must be positive, got {t_pass}")
    return rows * gen_len / (passes(prompt_len, gen_len) * t_pass)


@dataclass
class Bound:
    rows: int
    dtype: str
    layers: int
    t_pass_s: float
    passes: int
    tok_s: float
    what: str = ("F.linear over q,k,v,o,gate,up,down of every layer + lm_head, "
                 "R rows, serving dtype; bound = R*G / ((P+G) * t_R)")

    def to_json(self) -> dict:
        return asdict(self)


def time_pass(spec: ModelSpec, rows: int, dtype, device: str = "cpu", warmup: int = 3,
              repeats: int = 10) -> float:
    """Median seconds of one pass over all the model's linear layers at `rows` rows."""
    import torch

    from benchmarks.common import sync

    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = linear_shapes(spec)
    # Random weights [d_out, d_in] and one input [rows, d_in] per distinct d_in.
    weights = [(torch.randn(o, i, generator=g) * 0.02).to(device=device, dtype=dtype)
               for o, i in shapes]
    xs = {i: torch.randn(rows, i, generator=g).to(device=device, dtype=dtype)
          for _, i in shapes}
    times = []
    with torch.inference_mode():
        for n in range(warmup + repeats):
            sync(device)
            start = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)
            sync(device)
            if n >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(spec: ModelSpec, rows: int, prompt_len: int, gen_len: int, dtype,
            device: str = "cpu") -> Bound:
    from benchmarks.machine import dtype_name

    t = time_pass(spec, rows, dtype, device)
    return Bound(rows=rows, dtype=dtype_name(dtype), layers=len(linear_shapes(spec)),
                 t_pass_s=t, passes=passes(prompt_len, gen_len),
                 tok_s=bound_tok_s(t, rows, prompt_len, gen_len))
