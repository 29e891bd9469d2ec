"""Settings from flags and environment, the CLI's parser, and the metrics exposition."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from deltaserve.entrypoints.cli import main as cli
from deltaserve.entrypoints.metrics import ServerMetrics
from deltaserve.entrypoints.settings import Settings


def test_every_setting_is_a_documented_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = capsys.readouterr().out
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert "--" + name.replace("_", "-") in help_text
        assert "DELTASERVE_" + name.upper() in help_text
    for flag in (
        "--model",
        "--served-model-name",
        "--adapter-dir",
        "--redis-url",
        "--engine",
        "--device",
        "--dtype",
        "--max-num-seqs",
        "--max-gpu-adapters",
        "--max-cpu-adapters",
        "--max-lora-rank",
        "--api-keys",
        "--adapter-source-root",
    ):
        assert flag in help_text


def test_flags_beat_environment_beats_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = {}
    monkeypatch.setitem(
        cli.SUBCOMMANDS,
        "serve",
        cli.Subcommand("x", Settings, lambda s: captured.setdefault("s", s) and 0),
    )
    monkeypatch.setenv("DELTASERVE_MODEL", "/models/llama")
    monkeypatch.setenv("DELTASERVE_PORT", "9001")
    monkeypatch.setenv("DELTASERVE_MAX_NUM_SEQS", "7")
    monkeypatch.setenv("DELTASERVE_ADAPTER_SOURCE_ROOT", "/a:/b")
    cli.main(
        ["serve", "--port", "9002", "--adapter-source-root", "/c", "/d", "--dtype", "bfloat16"]
    )
    s: Settings = captured["s"]
    assert (s.model, s.port, s.max_num_seqs, s.dtype) == ("/models/llama", 9002, 7, "bfloat16")
    assert s.adapter_source_root == [Path("/c"), Path("/d")]
    assert s.base_model_id == "llama" and s.host == "127.0.0.1"
    assert Settings().adapter_source_root == [Path("/a"), Path("/b")]
    monkeypatch.setenv("DELTASERVE_ADAPTER_SOURCE_ROOT", '["/e"]')
    assert Settings().adapter_source_root == [Path("/e")]


def test_missing_model_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DELTASERVE_MODEL", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve"])
    assert exc.value.code == 2
    assert "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--model", "m", "--engine", "tensorrt"])


def test_metrics_exposition_has_required_families(client: TestClient) -> None:
    client.post("/v1/completions", json={"model": "alpha", "prompt": "hi", "max_tokens": 4, "n": 2})
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    required = [
        "deltaserve_num_requests_running",
        "deltaserve_num_requests_waiting",
        "deltaserve_kv_cache_usage_perc",
        "deltaserve_lora_requests_info",
        "deltaserve_time_to_first_token_seconds",
        "deltaserve_time_per_output_token_seconds",
        "deltaserve_e2e_request_latency_seconds",
        "deltaserve_prompt_tokens",
        "deltaserve_generation_tokens",
        "deltaserve_request_success",
        "deltaserve_adapter_cache_hits",
        "deltaserve_adapter_cache_misses",
        "deltaserve_adapter_load_seconds",
        "deltaserve_adapters_resident",
        "deltaserve_batch_size",
        "deltaserve_batch_adapters",
        "deltaserve_num_preemptions",
    ]
    assert not [name for name in required if name not in families]
    value = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert value[("deltaserve_generation_tokens_total", ())] == 8
    assert value[("deltaserve_request_success_total", (("finished_reason", "length"),))] == 2
    assert value[("deltaserve_e2e_request_latency_seconds_count", ())] == 1
    assert value[("deltaserve_adapters_resident", (("tier", "host"),))] == 5
    assert value[("deltaserve_batch_adapters", ())] == 2
    (info,) = families["deltaserve_lora_requests_info"].samples
    assert info.labels == {
        "max_lora": "4",
        "running_lora_adapters": "",
        "waiting_lora_adapters": "",
    }
    for tier in ("device", "host", "redis", "origin"):
        assert ("deltaserve_adapter_cache_hits_total", (("tier", tier),)) in value


def test_registries_are_per_app_and_engine_counters_are_optional() -> None:
    a, b = ServerMetrics(lambda: None), ServerMetrics(lambda: None)
    a.record_request(3, 2, ["stop"], 0.01, 0.02)
    a.record_adapter_lookup("redis", hit=False)
    a.observe_adapter_load("host", 0.003)
    text_a, text_b = a.render().decode(), b.render().decode()
    assert (
        "deltaserve_prompt_tokens_total 3.0" in text_a
        and "deltaserve_prompt_tokens_total 0.0" in text_b
    )
    assert 'deltaserve_adapter_cache_misses_total{tier="redis"} 1.0' in text_a
    assert 'deltaserve_adapter_load_seconds_count{tier="host"} 1.0' in text_a


def test_quantization_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from deltaserve.entrypoints.engine_factory import engine_config

    monkeypatch.setenv("DELTASERVE_MODEL", "/models/llama")
    assert Settings().quantization is None  # unset: the checkpoint decides
    monkeypatch.setenv("DELTASERVE_QUANTIZATION", "int4")
    assert engine_config(Settings()).quantization == "int4"
    captured = {}
    monkeypatch.setitem(
        cli.SUBCOMMANDS, "serve",
        cli.Subcommand("x", Settings, lambda s: captured.setdefault("s", s) and 0),
    )
    cli.main(["serve", "--quantization", "gptq"])
    assert captured["s"].quantization == "gptq"
    with pytest.raises(SystemExit):
        cli.main(["serve", "--quantization", "nf4"])
