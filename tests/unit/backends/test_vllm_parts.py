"""The plain-Python parts of `--engine vllm` (no vllm needed): engine arguments from the
settings and flags, LoRA ids per content, refusals of kinds vLLM does not run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deltaserve.backends.vllm.adapters import (
    LoRAIds,
    adapter_name,
    check_kind,
    check_lora_config,
)
from deltaserve.backends.vllm.args import (
    EngineArgError,
    engine_kwargs,
    lora_rank_cap,
    parse_engine_args,
)
from deltaserve.engine.adapters.base import AdapterError, AdapterRequest
from deltaserve.entrypoints.cli.main import build_parser
from deltaserve.entrypoints.engine_factory import EngineUnavailableError, build_engine
from deltaserve.entrypoints.settings import Settings


def settings_from(argv: list[str]) -> Settings:
    args = vars(build_parser().parse_args(["serve", "--model", "m", *argv]))
    return Settings(**{k: v for k, v in args.items() if k != "command" and not k.startswith("_")})


def test_flags_pass_through_to_engine_args() -> None:
    s = settings_from([
        "--engine", "vllm", "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2",
        "--distributed-executor-backend", "ray", "--gpu-memory-utilization", "0.5",
        "--max-loras", "3", "--max-lora-rank", "12", "--max-cpu-loras", "2", "--enforce-eager",
        "--served-model-name", "base", "--vllm-engine-arg", "max_num_batched_tokens=2048",
        "kv-cache-dtype=fp8", "--vllm-engine-arg", 'compilation_config={"level": 0}',
    ])  # fmt: skip
    kw = engine_kwargs(s)
    assert kw["tensor_parallel_size"] == 4 and kw["pipeline_parallel_size"] == 2
    assert kw["distributed_executor_backend"] == "ray" and kw["enforce_eager"] is True
    assert kw["gpu_memory_utilization"] == 0.5 and kw["served_model_name"] == "base"
    assert kw["max_loras"] == 3 and kw["max_lora_rank"] == 16 and kw["enable_lora"] is True
    assert kw["max_cpu_loras"] == 3  # vLLM needs max_cpu_loras >= max_loras
    assert kw["max_num_batched_tokens"] == 2048 and kw["kv_cache_dtype"] == "fp8"
    assert kw["compilation_config"] == {"level": 0}


def test_defaults_follow_the_adapter_limits() -> None:
    kw = engine_kwargs(Settings(model="m", max_cpu_adapters=9))
    assert (kw["max_loras"], kw["max_cpu_loras"], kw["max_lora_rank"]) == (8, 9, 64)
    assert engine_kwargs(Settings(model="m", max_gpu_adapters=5))["max_loras"] == 5
    assert "distributed_executor_backend" not in kw and "max_model_len" not in kw


def test_engine_args_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTASERVE_VLLM_ENGINE_ARG", '{"max_num_batched_tokens": 512}')
    assert engine_kwargs(Settings(model="m"))["max_num_batched_tokens"] == 512


@pytest.mark.parametrize("item", ["novalue", "=3", "bad key=1"])
def test_bad_engine_args_are_refused(item: str) -> None:
    with pytest.raises(EngineArgError, match="KEY=VALUE"):
        parse_engine_args([item])


def test_lora_rank_cap_rounds_up_to_what_vllm_accepts() -> None:
    assert [lora_rank_cap(r) for r in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(EngineArgError):
        lora_rank_cap(1024)


def test_ids_are_stable_per_content_and_never_reused() -> None:
    ids = LoRAIds()
    a = AdapterRequest("mine", "/a", uid="sha-a")
    b = AdapterRequest("mine", "/b", uid="sha-b")  # same name, other content (other tenant)
    (sa, new_a), (sa2, again) = ids.slot(a), ids.slot(a)
    sb, _ = ids.slot(b)
    assert new_a and not again and sa == sa2 and sb.int_id != sa.int_id
    assert sa.name != sb.name and adapter_name(sa.name) == adapter_name(sb.name) == "mine"
    ids.hold(sa.int_id)
    assert ids.drop("sha-a") is None  # in use: removed when the last request ends
    assert ids.release(sa.int_id) is True
    assert ids.drop("sha-b") == sb.int_id
    assert ids.slot(a)[0].int_id not in (sa.int_id, sb.int_id)


@pytest.mark.parametrize("kind", ["sparse_delta", "proxy"])
def test_other_kinds_name_the_native_engine(kind: str) -> None:
    with pytest.raises(AdapterError, match="--engine native"):
        check_kind(AdapterRequest("x", "/x", kind=kind))
    check_kind(AdapterRequest("x", "/x", kind="lora"))


def test_lora_rank_over_the_cap_is_refused(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 32}))
    with pytest.raises(AdapterError, match="rank 32"):
        check_lora_config(tmp_path, 16)
    check_lora_config(tmp_path, 32)


def test_without_vllm_the_engine_is_unavailable_with_a_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.delitem(sys.modules, "deltaserve.backends.vllm.client", raising=False)
    with pytest.raises(EngineUnavailableError, match=r"deltaserve\[vllm\]"):
        build_engine(Settings(model="m", engine="vllm"))
