"""W's traffic on Qwen3 and Gemma 3 bases (W-qwen3, W-gemma3): the specs and their keys, the
configs built with W's sizes, the opt-in variants and their grouping by base, and smoke-size
bases of both archs built and served by the engine."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import bench, common, deltaserve_engine, plans, served, targets, workload

# W's asset key before `arch` existed: the Llama assets already built must stay valid.
W_KEY = "w-3107a1ef71"
SMALL_KEY = "small-36794f3f75"


def test_llama_keys_are_unchanged_and_other_archs_get_their_own():
    assert workload.W_SPEC.arch == "llama"
    assert workload.W_SPEC.key() == W_KEY and workload.SMALL_SPEC.key() == SMALL_KEY
    keys = {dataclasses.replace(workload.W_SPEC, arch=a).key() for a in workload.ARCHS}
    assert len(keys) == len(workload.ARCHS)


@pytest.mark.parametrize("arch, cls, tied", [
    ("llama", "LlamaConfig", False),
    ("qwen3", "Qwen3Config", False),
    ("gemma3", "Gemma3TextConfig", True),
])
def test_configs_have_ws_sizes(arch, cls, tied):
    cfg = workload.base_config(dataclasses.replace(workload.W_SPEC, arch=arch))
    assert type(cfg).__name__ == cls and cfg.tie_word_embeddings is tied
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (768, 2048, 12)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (12, 4, 64)
    assert cfg.vocab_size == 4096 and cfg.max_position_embeddings == workload.MAX_POSITIONS


def test_gemma3_keeps_its_local_global_pattern():
    cfg = workload.base_config(dataclasses.replace(workload.W_SPEC, arch="gemma3"))
    assert cfg.sliding_window == 512 and cfg.query_pre_attn_scalar == 64
    assert set(cfg.layer_types) == {"sliding_attention", "full_attention"}


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        workload.base_config(dataclasses.replace(workload.SMALL_SPEC, arch="gpt2"))


def test_arch_variants_are_opt_in_and_w_traffic(tmp_path):
    from benchmarks import run_w

    assert common.ARCH_VARIANTS == {"W-qwen3": "qwen3", "W-gemma3": "gemma3"}
    assert not set(common.ARCH_VARIANTS) & set(bench.parse_args([]).variants)
    asked = ["W", "W-qwen3", "W-gemma3", "W-int8"]
    assert bench.parse_args(["--variants", ",".join(asked)]).variants == asked
    with pytest.raises(SystemExit):  # bench-offline runs one Llama base only
        run_w.parse_args(["--variants", "W-qwen3"])
    assets = workload.Assets(root=tmp_path, spec=workload.SMALL_SPEC)
    assert plans.plan(assets, "W-qwen3", 8) == plans.plan(assets, "W", 8)
    assert common.adapters_in("W-gemma3", 32) == 32


def test_variants_grouped_by_base():
    got = common.variants_by_arch(["W-gemma3", "W", "W-qwen3", "W-int8", "W-base"])
    assert got == {"gemma3": ["W-gemma3"], "llama": ["W", "W-int8", "W-base"],
                   "qwen3": ["W-qwen3"]}


def test_one_server_log_and_info_per_base():
    assert served.log_name("llama", None) == "served-server.log"
    assert served.log_name("llama", "int8") == "served-server-int8.log"
    assert served.log_name("qwen3", None) == "served-server-qwen3.log"
    info = bench.merge_served_info(None, "qwen3", {"dtype": "bfloat16"})
    info = bench.merge_served_info(info, "llama", {"dtype": "float32", "command": "c"})
    info = bench.merge_served_info(info, "gemma3", {"dtype": "bfloat16"})
    assert info == {"dtype": "float32", "command": "c",
                    "bases": {"qwen3": {"dtype": "bfloat16"}, "gemma3": {"dtype": "bfloat16"}}}


def _status(tok_s):
    return {t["target"]: (t["status"], t["ratio"]) for t in targets.evaluate(tok_s, None)}


def test_arch_and_int8_targets_against_served_w():
    got = _status({("served", "W"): 500.0, ("served", "W-qwen3"): 460.0,
                   ("served", "W-gemma3"): 440.0, ("served", "W-int8"): 650.0})
    assert got["served W-qwen3 ≥ 90% of served W"] == ("pass", pytest.approx(0.92))
    assert got["served W-gemma3 ≥ 90% of served W"] == ("fail", pytest.approx(0.88))
    assert got["served W-int8 ≥ 1.2× served W"] == ("pass", pytest.approx(1.3))


def test_arch_targets_not_measured_without_their_rows():
    got = _status({("served", "W"): 500.0, ("offline", "W-qwen3"): 480.0})
    for name in ("served W-qwen3 ≥ 90% of served W", "served W-gemma3 ≥ 90% of served W",
                 "served W-int8 ≥ 1.2× served W"):
        assert got[name] == ("n/a", None)


@pytest.fixture(scope="module", params=["qwen3", "gemma3"])
def small_base(request, tmp_path_factory):
    spec = dataclasses.replace(workload.SMALL_SPEC, arch=request.param, num_adapters=2)
    return workload.build(tmp_path_factory.mktemp(f"assets-{request.param}"), spec)


def test_small_base_is_its_arch_with_peft_loras(small_base):
    model_type = {"qwen3": "qwen3", "gemma3": "gemma3_text"}[small_base.spec.arch]
    cfg = json.loads((small_base.base_dir / "config.json").read_text())
    assert cfg["model_type"] == model_type and cfg["head_dim"] == 32
    lora = json.loads((small_base.adapter_dir(1) / "adapter_config.json").read_text())
    assert lora["r"] == 16 and lora["target_modules"] == sorted(workload.TARGET_MODULES)


def test_small_base_loads_in_the_engine_and_generates(small_base):
    api = deltaserve_engine._api()
    engine = api.LLMEngine(api.EngineConfig(model=str(small_base.base_dir), max_num_seqs=4,
                                            device="cpu"))
    prompts = small_base.prompts(3, 8)
    lora = api.AdapterRequest(name=small_base.adapter_name(0),
                              path=str(small_base.adapter_dir(0)), kind="lora")
    params = api.SamplingParams(max_tokens=4, min_tokens=4, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params, adapters=[None, lora, None])
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    assert [len(t) for t in tokens] == [4, 4, 4]
    assert all(0 <= t < workload.SMALL_SPEC.vocab_size for row in tokens for t in row)
