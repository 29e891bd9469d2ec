"""loadtests/: the workload's pieces, and a short real locust run against a live server."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from loadtests.stream import read_stream
from loadtests.summary import summarise
from loadtests.workload import Workload, Zipf, build_workload, mixes_from_adapters, read_keys
from tests.deploy.conftest import KEYS, ROOT
from tests.integration.server.conftest import RunningServer, TinyModel


def test_zipf_popularity_follows_rank():
    zipf = Zipf(["a", "b", "c", "d"], s=1.0)
    rng = random.Random(0)
    counts = Counter(zipf.draw(rng) for _ in range(20000))
    # P(rank k) = (1/k) / H_4, H_4 = 25/12.
    for k, name in enumerate("abcd", start=1):
        assert counts[name] / 20000 == pytest.approx((1 / k) / (25 / 12), abs=0.015)


def test_keys_from_the_servers_key_file_and_from_a_list(tmp_path: Path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(KEYS))
    keys = read_keys({"LOADTEST_API_KEYS_FILE": str(path)})
    assert keys.users == ("sk-acme", "sk-globex") and keys.admin == "sk-ops"
    assert [keys.user_key(i) for i in range(3)] == ["sk-acme", "sk-globex", "sk-acme"]
    listed = read_keys({"LOADTEST_API_KEYS": "k1, k2", "LOADTEST_ADMIN_KEY": "root"})
    assert listed.users == ("k1", "k2") and listed.admin == "root"
    assert read_keys({}).user_key(0) is None  # an open server: no Authorization header


def test_mixes_pair_loras_that_share_rank_and_targets():
    adapters = [
        {"id": "a", "kind": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj"]},
        {"id": "b", "kind": "lora", "rank": 4, "target_modules": ["v_proj", "q_proj"]},
        {"id": "c", "kind": "lora", "rank": 8, "target_modules": ["q_proj", "v_proj"]},
        {"id": "lt-1", "kind": "lora", "rank": 8, "target_modules": ["q_proj", "v_proj"]},
        {"id": "d", "kind": "sparse_delta", "rank": None, "target_modules": []},
    ]
    assert mixes_from_adapters(adapters) == [("a", "b")]


def test_workload_from_the_model_list_and_the_environment():
    listed = [{"id": "base"}, {"id": "a", "parent": "base"}, {"id": "lt-x", "parent": "base"}]
    w = build_workload({}, listed, [])
    assert (w.base, w.models, w.mixes) == ("base", ["base", "a"], [])
    w = build_workload({"LOADTEST_MODELS": "a", "LOADTEST_MIXES": "a+b;c"}, listed, [])
    assert w.models == ["a"] and w.mixes == [("a", "b")]


def test_requests_cover_the_mix():
    w = Workload(base="base", models=["base", "a"], mixes=[("a", "b")], mix_fraction=0.3)
    rng = random.Random(1)
    seen = [w.next_request(rng) for _ in range(400)]
    paths = {path for path, _, _ in seen}
    assert paths == {"/v1/completions", "/v1/chat/completions"}
    streamed = [b for _, b, _ in seen if b["stream"]]
    assert 0 < len(streamed) < 400 and all(b["stream_options"]["include_usage"] for b in streamed)
    mixes = [b for _, b, _ in seen if "adapters" in b]
    assert mixes and all(b["model"] == "base" for b in mixes)
    assert all("messages" in b for p, b, _ in seen if p == "/v1/chat/completions")


def test_stream_timing_from_chunks_and_usage():
    clock = iter([1.0, 1.5, 2.0]).__next__
    lines = [
        'data: {"choices": [{"delta": {"role": "assistant"}}]}',
        'data: {"choices": [{"delta": {"content": "a"}}]}',
        "",
        'data: {"choices": [{"delta": {"content": "b"}}]}',
        'data: {"choices": [{"delta": {"content": "c"}}]}',
        'data: {"choices": [], "usage": {"completion_tokens": 5}}',
        "data: [DONE]",
    ]
    t = read_stream(lines, start=0.25, clock=clock)
    assert t.error is None and t.tokens == 5
    assert t.ttft_s == pytest.approx(0.75)
    assert t.tpot_s == pytest.approx((2.0 - 1.0) / 4)


def test_stream_errors_are_reported():
    error = read_stream(['data: {"error": {"message": "draining"}}'], start=0.0)
    assert error.error == "draining"
    cut = read_stream(['data: {"choices": [{"text": "x"}]}'], start=0.0)
    assert "[DONE]" in cut.error


def test_locust_smoke_run_has_no_failures(
    live_server: RunningServer, deploy_model: TinyModel, keys_file: Path, tmp_path: Path
):
    """A few seconds of real locust: tenants' traffic and the admin's adapter churn, 0 failures."""
    env = {
        **os.environ,
        "LOADTEST_API_KEYS_FILE": str(keys_file),
        "LOADTEST_MIX_FRACTION": "0.4",
        "LOADTEST_MAX_TOKENS": "8",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--host", live_server.base_url,
         "--duration", "8s", "--users", "4", "--spawn-rate", "4", "--out", str(tmp_path),
         "--upload-dir", str(deploy_model.adapters / "alpha")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == summarise(tmp_path / "locust_stats.csv")
    assert summary["failures"] == 0 and summary["requests"] >= 10, summary
    assert summary["requests_per_s"] > 0
    for kind in ("TTFT", "TPOT"):
        assert summary[kind]["count"] > 0 and summary[kind]["p50_ms"] > 0, summary
    entries = summary["entries"]
    assert entries["POST /v1/adapters"] >= 1 and entries["DELETE /v1/adapters/[name]"] >= 1
    assert any(" mix" in name for name in entries), entries
    assert any(name.endswith(" stream") for name in entries), entries
    assert "TTFT p50" in result.stdout
    assert (tmp_path / "report.html").stat().st_size > 1000
    # Server side: both tenants' keys were used, and the admin left no adapter behind.
    metrics = live_server.metrics_text()
    assert 'tenant="acme"' in metrics and 'tenant="globex"' in metrics
    left = httpx.get(f"{live_server.base_url}/v1/adapters",
                     headers={"Authorization": "Bearer sk-ops"}).json()["data"]  # fmt: skip
    assert not [a["id"] for a in left if a["id"].startswith("lt-")]
