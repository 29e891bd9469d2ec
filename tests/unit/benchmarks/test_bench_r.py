"""Benchmark R's logic without servers: the trace, the per-run figures and the targets."""

from __future__ import annotations

import pytest

from benchmarks import r_report, traffic
from benchmarks.stream_load import Timing
from benchmarks.traffic import ChatRequest


class _Assets:
    """What traffic.trace reads of the workload's assets (a fake token stream stands in for
    the corpus through monkeypatch)."""

    def adapter_name(self, i: int) -> str:
        return f"lora-{i:02d}"


@pytest.fixture
def assets(monkeypatch):
    monkeypatch.setattr(traffic, "token_stream", lambda a: list(range(50_000)))
    return _Assets()


def test_the_trace_is_the_same_requests_at_every_rate(assets):
    slow = traffic.trace(assets, traffic.SHARED, 0.5, 40)
    fast = traffic.trace(assets, traffic.SHARED, 2.0, 40)
    assert [r.prompt for r in slow] == [r.prompt for r in fast]
    assert [r.at for r in slow] == pytest.approx([4 * r.at for r in fast])
    for r in slow:
        assert traffic.SYSTEM_LEN + 64 <= len(r.prompt) <= traffic.SYSTEM_LEN + 256
        assert 64 <= r.max_tokens <= 128 and r.adapter == f"lora-{r.tenant:02d}"
    # shared: a tenant's requests all start with its system prompt, tenants' prompts differ
    by_tenant = {r.tenant: r.prompt[:traffic.SYSTEM_LEN] for r in slow}
    assert all(r.prompt[:traffic.SYSTEM_LEN] == by_tenant[r.tenant] for r in slow)
    assert len({tuple(p) for p in by_tenant.values()}) == len(by_tenant)


def test_a_salt_moves_the_turns_but_not_the_tenants_system_prompts(assets):
    a = traffic.trace(assets, traffic.SHARED, 1.0, 20, salt=1)
    b = traffic.trace(assets, traffic.SHARED, 1.0, 20, salt=2)
    assert [r.prompt[:traffic.SYSTEM_LEN] for r in a] == [r.prompt[:traffic.SYSTEM_LEN] for r in b]
    assert all(x.prompt[traffic.SYSTEM_LEN:] != y.prompt[traffic.SYSTEM_LEN:]
               for x, y in zip(a, b, strict=True))
    fa = traffic.trace(assets, traffic.FRESH, 1.0, 20, salt=1)
    fb = traffic.trace(assets, traffic.FRESH, 1.0, 20, salt=2)
    assert not {tuple(r.prompt[:16]) for r in fa} & {tuple(r.prompt[:16]) for r in fb}


def test_fresh_requests_share_no_prefix(assets):
    reqs = traffic.trace(assets, traffic.FRESH, 1.0, 40)
    assert len({tuple(r.prompt[:16]) for r in reqs}) == 40


def _timing(sent, first, gap, n, cached=0):
    t = Timing(sent=sent, first=first, last=first + gap * (n - 1), completion_tokens=n,
               cached_tokens=cached)
    t.chunk_times = [first + gap * i for i in range(n)]
    return t


def test_summarise_reports_percentiles_throughput_and_hit_rate():
    reqs = [ChatRequest(0.0, 0, "a", [1] * 100, 10), ChatRequest(1.0, 1, "b", [2] * 100, 10)]
    timings = [_timing(0.0, 0.5, 0.1, 10, cached=80), _timing(1.0, 1.2, 0.2, 10)]
    row = r_report.summarise(reqs, timings, 0.0, {"hits": 10, "queries": 100},
                             {"hits": 90, "queries": 300})
    assert row["completion_tokens"] == 20 and row["seconds"] == pytest.approx(3.0)
    assert row["output_tok_s"] == pytest.approx(20 / 3.0)
    assert row["ttft_p50"] == pytest.approx(0.35) and row["tpot_p99"] == pytest.approx(0.199)
    assert row["itl_p99"] == pytest.approx(0.2)
    assert row["hit_rate"] == 0.4 and row["client_cached_share"] == 0.4


def _row(server, rate, **kw):
    base = dict(server=server, variant="shared", rate=rate, output_tok_s=100.0, ttft_p50=1.0,
                ttft_p99=2.0, tpot_p50=0.05, tpot_p99=0.08, hit_rate=0.8)
    return base | kw


def test_targets_pass_fail_and_not_measured():
    rows = [_row("deltaserve", 1.0, ttft_p99=0.5, tpot_p99=0.05, ttft_p50=0.2, output_tok_s=200),
            _row("deltaserve-no-cache", 1.0, ttft_p50=0.5),
            _row("vllm", 1.0, ttft_p99=2.0, tpot_p99=0.05, output_tok_s=100)]
    got = {t["target"]: t["status"] for t in r_report.evaluate(rows, [1.0])}
    assert got["1/s: TTFT p99 ≤ 0.5× vLLM-CPU"] == "pass"  # 0.25
    assert got["1/s: TPOT p99 ≤ 0.7× vLLM-CPU"] == "FAIL"  # 1.0
    assert got["1/s: TTFT p50 ≥ 3× better than --no-enable-prefix-caching"] == "FAIL"  # 2.5
    assert got["1/s: hit rate ≥ 70% of prompt tokens"] == "pass"
    assert got["1/s: output tok/s ≥ 1.5× vLLM-CPU"] == "pass"
    no_vllm = r_report.evaluate(rows[:2], [1.0])
    assert {t["status"] for t in no_vllm if "vLLM" in t["target"]} == {"not measured"}
