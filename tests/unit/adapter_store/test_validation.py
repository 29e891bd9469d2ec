"""The malicious-input corpus at the function level: each refused with the right error/status."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deltaserve.adapter_store import ingest as ing
from deltaserve.adapter_store.content import ContentStore, pack_dir, sha256_of, unpack_blob
from deltaserve.adapter_store.errors import (
    AdapterForbiddenError,
    AdapterTooLargeError,
    InvalidAdapterError,
    StoreError,
)
from deltaserve.adapter_store.paths import check_adapter_name, check_relative_path
from deltaserve.adapter_store.validation import Limits, validate_adapter_dir
from tests.unit.adapter_store.helpers import SHAPES, lora_tensors, write_lora, write_pickle_lora

LIMITS = Limits(max_rank=16)


def validate(path: Path):
    return validate_adapter_dir(path, SHAPES, LIMITS)


def test_valid_lora_reports_kind_rank_targets(tmp_path: Path) -> None:
    v = validate(write_lora(tmp_path / "a", rank=8))
    assert (v.kind, v.rank, v.target_modules) == ("lora", 8, ["q_proj", "v_proj"])


def _bad_tensor(name: str, value: float):
    def mutate(t: dict) -> dict:
        t[name][0, 0] = value
        return t

    return mutate


KEY_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
KEY_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
CASES = {
    "nan": (_bad_tensor(KEY_A, float("nan")), "non_finite_weights"),
    "inf": (_bad_tensor(KEY_B, float("inf")), "non_finite_weights"),
    "wrong_shape": (lambda t: {**t, KEY_A: torch.zeros(4, 65)}, "shape_mismatch"),
    "rank_mismatch": (lambda t: {**t, KEY_B: torch.zeros(64, 3)}, "invalid_adapter"),
    "too_many_layers": (
        lambda t: {**t, KEY_A.replace("layers.0", "layers.7"): torch.zeros(4, 64),
                   KEY_B.replace("layers.0", "layers.7"): torch.zeros(64, 4)},
        "invalid_adapter",
    ),
    "missing_b": (lambda t: {k: v for k, v in t.items() if k != KEY_B}, "invalid_adapter"),
    "foreign_tensor": (lambda t: {**t, "model.embed_tokens.weight": torch.zeros(3, 3)},
                       "unsupported_tensor"),
    "int_weights": (lambda t: {**t, KEY_A: torch.zeros(4, 64, dtype=torch.int32)},
                    "invalid_adapter"),
    "empty": (lambda t: {}, "no_weights"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tensors_are_refused(tmp_path: Path, case: str) -> None:
    mutate, code = CASES[case]
    path = write_lora(tmp_path / case, tensors=mutate(lora_tensors(4)))
    with pytest.raises(InvalidAdapterError) as err:
        validate(path)
    assert err.value.status == 422 and err.value.code == code


def test_rank_over_limit_in_config_and_tensors(tmp_path: Path) -> None:
    with pytest.raises(InvalidAdapterError) as err:
        validate(write_lora(tmp_path / "big", rank=32))
    assert err.value.code == "rank_too_large"
    path = write_lora(tmp_path / "lies", rank=32, config={"r": 4})
    with pytest.raises(InvalidAdapterError, match="rank 32"):
        validate(path)


@pytest.mark.parametrize("config", [{"use_dora": True}, {"peft_type": "IA3"}, {"bias": "all"}])
def test_unsupported_peft_features(tmp_path: Path, config: dict) -> None:
    with pytest.raises(InvalidAdapterError) as err:
        validate(write_lora(tmp_path / "x", config=config))
    assert err.value.code == "unsupported_adapter"


def _corrupt(path: Path, how: str) -> None:
    f = path / "adapter_model.safetensors"
    data = f.read_bytes()
    if how == "truncated":
        f.write_bytes(data[:-10])
    elif how == "huge_header":
        f.write_bytes(struct.pack("<Q", 1 << 40) + data[8:])
    elif how == "not_json":
        n = struct.unpack("<Q", data[:8])[0]
        f.write_bytes(data[:8] + b"\xff" * n + data[8 + n :])
    elif how == "tiny":
        f.write_bytes(b"\x01\x02")
    elif how == "trailing":
        f.write_bytes(data + b"junk")


@pytest.mark.parametrize("how", ["truncated", "huge_header", "not_json", "tiny", "trailing"])
def test_corrupt_safetensors(tmp_path: Path, how: str) -> None:
    path = write_lora(tmp_path / how)
    _corrupt(path, how)
    with pytest.raises(InvalidAdapterError) as err:
        validate(path)
    assert err.value.code == "invalid_safetensors"


def test_pickle_is_refused_by_name_and_magic_never_loaded(tmp_path: Path) -> None:
    src = write_pickle_lora(tmp_path / "src" / "p")
    with pytest.raises(InvalidAdapterError) as err:
        ing.stage_source(str(src), [tmp_path / "src"], tmp_path / "out", 1 << 20)
    assert err.value.code == "pickle_refused"
    disguised = io.BytesIO((src / "adapter_model.bin").read_bytes())
    with pytest.raises(InvalidAdapterError) as err:
        ing.stage_upload([("weights.dat", disguised)], _mk(tmp_path / "s2"), 1 << 20)
    assert err.value.code == "pickle_refused"


def _mk(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "x" * 129, "a b", "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidAdapterError) as err:
        check_adapter_name(name)
    assert err.value.status == 422


@pytest.mark.parametrize("rel", ["../evil", "/abs", "a\\b", "a/../b", "a//b", "./a", "a/b/c/d/e"])
def test_bad_relative_paths(rel: str) -> None:
    with pytest.raises(InvalidAdapterError):
        check_relative_path(rel)


def test_sources_must_resolve_inside_a_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", write_lora(tmp_path / "outside")
    write_lora(root / "ok")
    (root / "link").symlink_to(outside)
    for source in (str(outside), str(root / "link"), str(root / ".." / "outside")):
        with pytest.raises(AdapterForbiddenError):
            ing.stage_source(source, [root], _mk(tmp_path / f"s{abs(hash(source))}"), 1 << 20)
    with pytest.raises(AdapterForbiddenError):
        ing.stage_source(str(root / "ok"), [], _mk(tmp_path / "s-none"), 1 << 20)
    assert ing.stage_source(str(root / "ok"), [root], _mk(tmp_path / "s-ok"), 1 << 20) > 0


def test_symlinked_file_leaving_the_adapter_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    adapter = write_lora(root / "a")
    (tmp_path / "secret.json").write_text("{}")
    os.symlink(tmp_path / "secret.json", adapter / "extra.json")
    with pytest.raises(InvalidAdapterError) as err:
        ing.stage_source(str(adapter), [root], _mk(tmp_path / "s"), 1 << 20)
    assert err.value.code == "symlink"


def test_size_limits_are_413_before_reading(tmp_path: Path) -> None:
    adapter = write_lora(tmp_path / "root" / "a", rank=16)
    with pytest.raises(AdapterTooLargeError):
        ing.stage_source(str(adapter), [tmp_path / "root"], _mk(tmp_path / "s"), 1000)
    with pytest.raises(AdapterTooLargeError) as err:
        ing.stage_upload([("big.json", io.BytesIO(b"x" * 5000))], _mk(tmp_path / "u"), 1000)
    assert err.value.status == 413


def test_config_paths_cannot_leave_the_adapter(tmp_path: Path) -> None:
    path = _mk(tmp_path / "d")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "delta.safetensors"))
    cfg = {"kind": "sparse_delta", "base_model": "b", "weights": "../delta.safetensors"}
    (path / "deltaserve_adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidAdapterError) as err:
        validate(path)
    assert err.value.code == "invalid_path"


def test_sparse_delta_and_mix(tmp_path: Path) -> None:
    path = _mk(tmp_path / "d")
    name = "model.layers.0.self_attn.q_proj.weight"
    save_file({f"{name}.indices": torch.tensor([1, 5]), f"{name}.values": torch.tensor([0.1, 0.2])},
              str(path / "delta.safetensors"))  # fmt: skip
    (path / "deltaserve_adapter.json").write_text(json.dumps({"kind": "sparse_delta"}))
    assert validate(path).kind == "sparse_delta"
    mix = _mk(tmp_path / "m")
    cfg = {"kind": "mix", "inventory": ["a", "b"], "heads": 2, "routing": [[1, 0], [0.5]]}
    (mix / "deltaserve_adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidAdapterError, match="routing"):
        validate(mix)
    cfg["routing"] = [[1, 0], [0.5, 0.5]]
    (mix / "deltaserve_adapter.json").write_text(json.dumps(cfg))
    assert validate(mix).kind == "mix"


def test_blob_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    blob = pack_dir(write_lora(tmp_path / "a"))
    assert blob == pack_dir(tmp_path / "a") and sha256_of(blob) == sha256_of(blob)
    store = ContentStore(tmp_path / "data")
    path = store.install_blob(blob, sha256_of(blob))
    assert validate(path).kind == "lora"
    with pytest.raises(StoreError):
        store.install_blob(blob + b"x", sha256_of(blob))
    with pytest.raises(InvalidAdapterError):
        unpack_blob(blob[:-5], _mk(tmp_path / "u"))
