"""load_lora on real PEFT directories (tests/tiny.py) and on broken ones crafted from them."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.adapters.lora import load_lora
from deltaserve.engine.config import ModelConfig
from tests.tiny import make_lora, make_model

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("base"))
    model = make_model(d, "llama")
    cfg = ModelConfig.from_dir(d)
    h = cfg.hidden_size
    ins = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": cfg.q_size,
           "gate_proj": h, "up_proj": h, "down_proj": cfg.intermediate_size}
    outs = {"q_proj": cfg.q_size, "k_proj": cfg.kv_size, "v_proj": cfg.kv_size,
            "o_proj": h, "gate_proj": cfg.intermediate_size, "up_proj": cfg.intermediate_size,
            "down_proj": h}
    return model, ins, outs, cfg.num_hidden_layers


@pytest.fixture(scope="module")
def good(base, tmp_path_factory):
    """A rank-8 LoRA on q/v (alpha 16) and its PeftModel."""
    d = str(tmp_path_factory.mktemp("good"))
    return d, make_lora(base[0], d, r=8, alpha=16, targets=("q_proj", "v_proj"), seed=1)


def _load(base, path, max_rank=64, name="x"):
    _, ins, outs, layers = base
    return load_lora(name, path, ins, outs, layers, max_rank)


def _peft_module(peft_model, layer: int, module: str):
    block = peft_model.base_model.model.model.layers[layer]
    return getattr(block.mlp if module in ("gate_proj", "up_proj", "down_proj") else block.self_attn,
                   module)


def _assert_matches_peft(adapter, peft_model):
    """A equals lora_A; B equals lora_B × PEFT's own per-module scaling."""
    for (layer, module), (a, b) in adapter.tensors.items():
        mod = _peft_module(peft_model, layer, module)
        torch.testing.assert_close(a, mod.lora_A["default"].weight.float())
        expect = mod.lora_B["default"].weight.float() * mod.scaling["default"]
        torch.testing.assert_close(b, expect, msg=f"layer {layer} {module}")


def _copy(src: str, dst_root, name: str) -> str:
    dst = os.path.join(str(dst_root), name)
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: str, **changes) -> None:
    p = os.path.join(path, CONFIG)
    with open(p) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(p, "w") as f:
        json.dump(cfg, f)


def _edit_tensors(path: str, fn) -> None:
    p = os.path.join(path, WEIGHTS)
    tensors = load_file(p)
    save_file(fn(dict(tensors)), p)


def _key(tensors: dict, layer: int, module: str, ab: str) -> str:
    return next(k for k in tensors if f"layers.{layer}." in k and f"{module}.lora_{ab}" in k)


# ---- good adapters ------------------------------------------------------------------------

def test_loads_real_peft_lora_with_alpha_over_r_folded_into_b(base, good):
    path, peft_model = good
    ad = _load(base, path, name="good")
    assert ad.name == "good" and ad.rank == 8
    assert set(ad.tensors) == {(0, "q_proj"), (0, "v_proj"), (1, "q_proj"), (1, "v_proj")}
    _assert_matches_peft(ad, peft_model)
    raw = load_file(os.path.join(path, WEIGHTS))
    b = raw[_key(raw, 0, "q_proj", "B")]
    torch.testing.assert_close(ad.tensors[(0, "q_proj")][1], b * (16 / 8))
    assert all(a.device.type == "cpu" and a.dtype == torch.float32 and a.is_contiguous()
               for pair in ad.tensors.values() for a in pair)
    assert ad.nbytes == sum(a.nbytes + b.nbytes for a, b in ad.tensors.values())


def test_all_modules_with_rslora_scale_alpha_over_sqrt_r(base, tmp_path):
    peft_model = make_lora(base[0], str(tmp_path), r=4, alpha=8, targets=ALL, rslora=True)
    ad = _load(base, str(tmp_path))
    assert {m for _, m in ad.tensors} == set(ALL)
    _assert_matches_peft(ad, peft_model)
    raw = load_file(os.path.join(str(tmp_path), WEIGHTS))
    b = raw[_key(raw, 1, "down_proj", "B")]
    torch.testing.assert_close(ad.tensors[(1, "down_proj")][1], b * (8 / math.sqrt(4)))


@pytest.mark.parametrize("patterns", [
    {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"v_proj": 32}},
    {"alpha_pattern": {"self_attn.v_proj": 4}},
    {"alpha_pattern": {"model.layers.1.self_attn.q_proj": 64}},
    {"alpha_pattern": {r"layers\.0\..*v_proj": 2}},
], ids=["module-name", "dotted-suffix", "full-path", "regex"])
def test_rank_and_alpha_patterns_match_peft(base, tmp_path, patterns):
    peft_model = make_lora(base[0], str(tmp_path), r=8, alpha=16, targets=("q_proj", "v_proj"),
                           **patterns)
    ad = _load(base, str(tmp_path))
    _assert_matches_peft(ad, peft_model)


def test_bf16_weights_load_as_float32(base, good, tmp_path):
    path = _copy(good[0], tmp_path, "bf16")
    _edit_tensors(path, lambda t: {k: v.to(torch.bfloat16) for k, v in t.items()})
    ad = _load(base, path)
    assert all(a.dtype == torch.float32 for pair in ad.tensors.values() for a in pair)


# ---- refused configs ----------------------------------------------------------------------

def test_dora_refused(base, tmp_path):
    make_lora(base[0], str(tmp_path), r=4, use_dora=True)
    with pytest.raises(AdapterError, match="DoRA"):
        _load(base, str(tmp_path))


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_embedding_and_lm_head_targets_refused(base, good, tmp_path, target):
    path = _copy(good[0], tmp_path, target)
    _edit_config(path, target_modules=["q_proj", "v_proj", target])
    with pytest.raises(AdapterError, match=rf"unsupported target modules \['{target}'\]"):
        _load(base, path)


@pytest.mark.parametrize("change, message", [
    ({"peft_type": "IA3"}, "only LORA"),
    ({"bias": "all"}, "bias"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"),
])
def test_unsupported_config_features_refused(base, good, tmp_path, change, message):
    path = _copy(good[0], tmp_path, "cfg")
    _edit_config(path, **change)
    with pytest.raises(AdapterError, match=message):
        _load(base, path)


def test_missing_or_invalid_config(base, good, tmp_path):
    path = _copy(good[0], tmp_path, "nocfg")
    os.remove(os.path.join(path, CONFIG))
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        _load(base, path)
    with open(os.path.join(path, CONFIG), "w") as f:
        f.write("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        _load(base, path)
    with open(os.path.join(path, CONFIG), "w") as f:
        f.write("[1, 2]")
    with pytest.raises(AdapterError, match="JSON object"):
        _load(base, path)


class _Boom:
    """Unpickling this creates a marker file: proves whether the loader unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_weights_refused_without_unpickling(base, good, tmp_path):
    path = _copy(good[0], tmp_path, "pickle")
    os.remove(os.path.join(path, WEIGHTS))
    marker = str(tmp_path / "unpickled")
    with open(os.path.join(path, "adapter_model.bin"), "wb") as f:
        pickle.dump(_Boom(marker), f)
    with pytest.raises(AdapterError, match="pickle"):
        _load(base, path)
    assert not os.path.exists(marker)
    os.remove(os.path.join(path, "adapter_model.bin"))
    with pytest.raises(AdapterError, match="missing"):
        _load(base, path)


# ---- broken tensors -----------------------------------------------------------------------

def _shrink_a(t):
    k = _key(t, 0, "q_proj", "A")
    t[k] = t[k][:, :-1].contiguous()
    return t


def _rank_mismatch(t):
    k = _key(t, 1, "v_proj", "B")
    t[k] = t[k][:, :-1].contiguous()
    return t


def _nan(t):
    k = _key(t, 1, "q_proj", "B")
    t[k] = t[k].clone()
    t[k][3, 2] = float("nan")
    return t


def _inf(t):
    k = _key(t, 0, "v_proj", "A")
    t[k] = t[k].clone()
    t[k][0, 0] = float("inf")
    return t


def _drop_b(t):
    del t[_key(t, 0, "v_proj", "B")]
    return t


def _layer_beyond(t):
    k = _key(t, 1, "q_proj", "A")
    t[k.replace("layers.1.", "layers.7.")] = t.pop(k)
    kb = _key(t, 1, "q_proj", "B")
    t[kb.replace("layers.1.", "layers.7.")] = t.pop(kb)
    return t


def _int_weights(t):
    k = _key(t, 0, "q_proj", "A")
    t[k] = t[k].to(torch.int32)
    return t


def _three_d(t):
    k = _key(t, 0, "q_proj", "A")
    t[k] = t[k].unsqueeze(0).contiguous()
    return t


def _embedding_tensor(t):
    t["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(8, 272)
    return t


@pytest.mark.parametrize("mutate, message", [
    (_shrink_a, r"layer 0 q_proj: shapes A\(8, 63\)"),
    (_rank_mismatch, "layer 1 v_proj: shapes"),
    (_nan, "layer 1 q_proj: weights contain NaN or Inf"),
    (_inf, "layer 0 v_proj: weights contain NaN or Inf"),
    (_drop_b, "layer 0 v_proj: lora_A and lora_B must both be present"),
    (_layer_beyond, "layer 7 q_proj: the base model has only 2 layers"),
    (_int_weights, "floating-point"),
    (_three_d, "2-D"),
    (_embedding_tensor, "unsupported tensor"),
    (lambda t: {}, "no LoRA tensors"),
], ids=["wrong-d_in", "rank-mismatch", "nan", "inf", "missing-B", "layer-beyond",
        "int-dtype", "3-d", "embedding-key", "empty"])
def test_broken_tensors_refused(base, good, tmp_path, mutate, message):
    path = _copy(good[0], tmp_path, "broken")
    _edit_tensors(path, mutate)
    with pytest.raises(AdapterError, match=message):
        _load(base, path)


def test_rank_above_max_rank_refused(base, good):
    with pytest.raises(AdapterError, match="rank 8 exceeds the server's max LoRA rank 4"):
        _load(base, good[0], max_rank=4)
    assert _load(base, good[0], max_rank=8).rank == 8


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty-file"])
def test_unreadable_safetensors_refused(base, good, tmp_path, damage):
    path = _copy(good[0], tmp_path, damage)
    p = os.path.join(path, WEIGHTS)
    data = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096),
                 "empty-file": b""}[damage])
    with pytest.raises(AdapterError, match="cannot read adapter_model.safetensors"):
        _load(base, path)
