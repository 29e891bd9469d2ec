"""Which adapter each request of a variant uses — one plan for every engine (offline engine,
served HTTP, PEFT, vLLM), so they all run the same traffic.

    W-base: every request on the base          W-8 / W / W-int8: request i on LoRA i mod k
    W-delta: every 4th request on one of 8 sparse deltas (round robin), the rest on the base
    W-proxy: every 4th request on one of 2 proxy adapters (round robin), the rest on the base
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks import delta_assets, proxy_assets
from benchmarks.common import DELTA_VARIANTS, PROXY_VARIANTS, adapters_in, round_robin
from benchmarks.workload import Assets


@dataclass(frozen=True)
class AdapterRef:
    """One adapter of a variant: its name (= its directory's name when served), where it is on
    disk and its kind (lora | sparse_delta | proxy)."""

    name: str
    path: Path
    kind: str = "lora"


@dataclass(frozen=True)
class Plan:
    """The distinct adapters of a variant and, per request, the one it uses (None: the base)."""

    adapters: list[AdapterRef]
    per_request: list[AdapterRef | None]


def plan(assets: Assets, variant: str, num_requests: int) -> Plan:
    """The variant's plan; builds the sparse deltas / proxy adapters on first use (cached)."""
    if variant in DELTA_VARIANTS:
        refs = [AdapterRef(d.name, d, "sparse_delta") for d in delta_assets.build_deltas(assets)]
        order = delta_assets.delta_plan(num_requests, len(refs))
    elif variant in PROXY_VARIANTS:
        refs = [AdapterRef(d.name, d, "proxy") for d in proxy_assets.build_proxies(assets)]
        order = proxy_assets.proxy_plan(num_requests, len(refs))
    else:
        k = adapters_in(variant, assets.spec.num_adapters)
        refs = [AdapterRef(assets.adapter_name(i), assets.adapter_dir(i)) for i in range(k)]
        order = round_robin(num_requests, k)
    return Plan(refs, [None if i is None else refs[i] for i in order])
