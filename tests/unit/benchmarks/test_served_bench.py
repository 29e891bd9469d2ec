"""The served benchmark end to end at smoke size: a real `deltaserve serve` subprocess, real
HTTP clients, the matmul bound, results.json and the plot; and the subprocess lifecycle (ready,
stopped on exit, on error and when it dies early)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import bench, run_w, served, workload
from benchmarks.server_proc import ServerFailed, ServerProcess, free_port


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as dead)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_server_process_ready_then_killed(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with pytest.raises(RuntimeError, match="inside"):  # an error in the block still stops it
        with ServerProcess(cmd, port, tmp_path / "log", ready_path="/", start_timeout=60) as srv:
            pid = srv.proc.pid
            assert _alive(pid)
            raise RuntimeError("inside")
    assert not _alive(pid) and srv.proc is None
    srv.stop()  # idempotent


def test_server_that_exits_early_reports_its_log(tmp_path):
    cmd = [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"]
    with pytest.raises(ServerFailed, match="(?s)exited with code 3.*bad flag"):
        with ServerProcess(cmd, free_port(), tmp_path / "log", start_timeout=60):
            pass


# A benchmark process that starts a server, prints the server's pid and waits to be killed.
HARNESS = """
import sys, time
from benchmarks.server_proc import ServerProcess, exit_on_sigterm, free_port
exit_on_sigterm()
port = free_port()
cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
with ServerProcess(cmd, port, __import__("pathlib").Path(sys.argv[1]), ready_path="/",
                   start_timeout=60) as srv:
    print(srv.proc.pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_server_dies_with_the_benchmark(tmp_path, sig):
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(tmp_path / "log")],
                               stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(harness.stdout.readline())
        assert _alive(server_pid)
        harness.send_signal(sig)
        harness.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server_pid)
    finally:
        harness.kill()
        harness.wait()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """One --out for the module: the smoke-size assets are built once."""
    return tmp_path_factory.mktemp("bench-out")


@pytest.mark.timeout(300)
def test_small_served_benchmark_end_to_end(out_dir, capsys):
    tmp_path = out_dir
    argv = ["--small", "--out", str(tmp_path), "--engines", "served,offline,vllm",
            "--variants", "W-base,W,W-proxy", "--vllm-python", str(tmp_path / "no-venv/python"),
            "--server-start-timeout", "180"]
    assert bench.main(argv) == 0
    out = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["engine"], r["variant"]): r for r in out["results"]}
    for variant in ("W-base", "W", "W-proxy"):
        r = rows[("served", variant)]
        assert r["error"] is None, r
        assert r["generated_tokens"] == 8 * 8 and r["tok_s"] > 0  # 8 requests x 8 tokens
    assert rows[("served", "W")]["num_adapters"] == 4
    assert rows[("offline", "W")]["generated_tokens"] == 64 and rows[("offline", "W")]["tok_s"] > 0
    assert rows[("vllm", "W")]["error"].startswith("skipped: no vLLM venv")
    assert ("vllm", "W-proxy") not in rows
    assert out["bound"]["tok_s"] > 0 and out["bound"]["layers"] == 15
    assert out["dtypes"]["served"] == out["dtypes"]["native"]  # the server's auto = ours
    assert out["served"]["engine_info"]["dtype"] == out["dtypes"]["served"]  # its /metrics
    share = {(r["engine"], r["variant"]): r["share_of_bound"] for r in out["rows"]}
    assert share[("served", "W")] == pytest.approx(
        rows[("served", "W")]["tok_s"] / out["bound"]["tok_s"], rel=1e-3)
    status = {t["target"]: t["status"] for t in out["targets"]}
    assert status["served W ≥ 2× vLLM-CPU W"] == "n/a"
    assert status["served W ≥ 85% of served W-base"] in ("pass", "fail")
    assert status["served W ≥ 90% of offline W"] in ("pass", "fail")
    assert (tmp_path / "served.png").stat().st_size > 0
    assert "served-adapters" in out["served"]["command"]
    printed = capsys.readouterr().out
    assert "[served] W: " in printed and "tok/s" in printed


@pytest.mark.timeout(600)
def test_small_arch_variants_get_their_own_base_and_server(out_dir, capsys):
    argv = ["--small", "--out", str(out_dir), "--workloads", "W", "--repeats", "1",
            "--engines", "served,offline,peft,vllm", "--variants", "W,W-qwen3,W-gemma3",
            "--vllm-python", str(out_dir / "no-venv/python"), "--server-start-timeout", "180"]
    assert bench.main(argv) == 0
    out = json.loads((out_dir / "results.json").read_text())
    rows = {(r["engine"], r["variant"]): r for r in out["results"]}
    for engine in ("served", "offline", "peft"):
        for variant in ("W-qwen3", "W-gemma3"):
            r = rows[(engine, variant)]
            assert r["error"] is None and r["generated_tokens"] == 64, r  # 8 requests x 8
            assert r["num_adapters"] == 4
    assert ("vllm", "W-qwen3") not in rows and ("vllm", "W-gemma3") not in rows
    bases = out["served"]["bases"]
    for arch in ("qwen3", "gemma3"):
        model = bases[arch]["command"].split("--model ")[1].split()[0]
        assert model != out["served"]["command"].split("--model ")[1].split()[0]
        assert json.loads((Path(model) / "config.json").read_text())["model_type"].startswith(
            arch)
        assert bases[arch]["log"].endswith(f"served-server-{arch}.log")
    status = {t["target"]: t["status"] for t in out["targets"]}
    assert status["served W-qwen3 ≥ 90% of served W"] in ("pass", "fail")
    assert status["served W-gemma3 ≥ 90% of served W"] in ("pass", "fail")
    assert status["served W-int8 ≥ 1.2× served W"] == "n/a"
    assert "[served] W-gemma3: " in capsys.readouterr().out


@pytest.mark.timeout(300)
def test_offline_harness_still_runs(out_dir):
    argv = ["--small", "--out", str(out_dir), "--engines", "deltaserve", "--variants", "W-8"]
    assert run_w.main(argv) == 0
    res = json.loads((out_dir / "results.json").read_text())["results"]
    assert [(r["engine"], r["variant"], r["generated_tokens"]) for r in res] == [
        ("deltaserve", "W-8", 64)]


@pytest.mark.timeout(120)
def test_served_rows_say_why_when_the_server_does_not_start(tmp_path):
    assets = workload.Assets(root=tmp_path / "no-such-assets", spec=workload.SMALL_SPEC)
    rows, info = served.run_all(assets, ["W-base"], [[5, 6, 7]], 2, tmp_path,
                                progress=lambda m: None, start_timeout=60)
    assert rows[0].tok_s == 0 and rows[0].error.startswith("server failed: server exited")
    assert str(tmp_path / "served-server.log") in rows[0].error
    assert info["command"].startswith("deltaserve serve --model ")


@pytest.mark.timeout(180)
def test_quantized_variant_gets_its_own_server(tmp_path):
    assets = workload.Assets(root=tmp_path / "no-such-assets", spec=workload.SMALL_SPEC)
    rows, info = served.run_all(assets, ["W-base", "W-int8"], [[5, 6, 7]], 2, tmp_path,
                                progress=lambda m: None, start_timeout=60)
    assert [r.variant for r in rows] == ["W-base", "W-int8"]
    assert "--quantization" not in info["command"]
    int8 = info["quantized"]["int8"]
    assert int8["command"].endswith("--quantization int8")
    assert str(tmp_path / "served-server-int8.log") in rows[1].error
