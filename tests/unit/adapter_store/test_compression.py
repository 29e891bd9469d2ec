"""adapter_store/compression.py (+ darex.py, the `compress` CLI, store validation of deltas)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deltaserve.adapter_store.compression import PROJ_KEY, CompressionError, compress, load_state
from deltaserve.adapter_store.errors import InvalidAdapterError
from deltaserve.adapter_store.validation import BaseShapes, Limits, validate_adapter_dir
from deltaserve.engine.config import ModelConfig
from deltaserve.entrypoints.cli.main import main
from tests.tiny import make_model, make_tokenizer


def _finetune(base_model, out: Path, seed: int, touch: str | None = None) -> Path:
    ft = copy.deepcopy(base_model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ft.named_parameters():
            if PROJ_KEY.match(name) or name == touch:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    ft.save_pretrained(str(out), safe_serialization=True)
    make_tokenizer(str(out))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    base = make_model(str(root / "base"), "llama", intermediate_size=256)
    ft = _finetune(base, root / "ft", seed=1)
    deltas = {k: v - load_state(root / "base")[k]
              for k, v in load_state(ft).items() if PROJ_KEY.match(k)}
    return root, base, deltas


def _stored(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / "deltaserve_adapter.json").read_text()), load_file(
        str(out / "delta.safetensors"))


def _pairs(st, deltas):
    for name, d in deltas.items():
        idx = st[f"{name}.indices"].long()
        yield name, d.flatten(), idx, st[f"{name}.values"]


@pytest.mark.parametrize("density", [0.1, 0.5])
def test_dare_rescale_and_kept_fraction(models, tmp_path, density):
    root, _, deltas = models
    res = compress(root / "base", root / "ft", tmp_path / "d", "dare", density, progress=False)
    cfg, st = _stored(tmp_path / "d")
    assert cfg["kind"] == "sparse_delta" and cfg["base_model"] == "base" and cfg["q"] is None
    assert abs(res.kept / res.total - density) < 0.01
    for _, d, idx, val in _pairs(st, deltas):
        torch.testing.assert_close(val, d[idx] / density, rtol=1e-6, atol=0)
    assert res.size_ratio < 1


def test_magnitude_keeps_the_largest_unscaled(models, tmp_path):
    root, _, deltas = models
    compress(root / "base", root / "ft", tmp_path / "m", "magnitude", 0.05, progress=False)
    _, st = _stored(tmp_path / "m")
    for _, d, idx, val in _pairs(st, deltas):
        assert idx.numel() == round(0.05 * d.numel())
        torch.testing.assert_close(val, d[idx], rtol=0, atol=0)
        rest = torch.ones(d.numel(), dtype=torch.bool)
        rest[idx] = False
        assert d[idx].abs().min() >= d[rest].abs().max()


def test_darex_fixed_global_and_per_layer_q(models, tmp_path):
    root, _, deltas = models
    dare = compress(root / "base", root / "ft", tmp_path / "dare", "dare", 0.1, progress=False)
    fixed = compress(root / "base", root / "ft", tmp_path / "x", "darex-q", 0.1, q=0.25,
                     progress=False)
    _, st = _stored(tmp_path / "x")
    _, st_dare = _stored(tmp_path / "dare")
    for name, d, idx, val in _pairs(st, deltas):
        torch.testing.assert_close(val, d[idx] / 0.25, rtol=1e-6, atol=0)
        assert torch.equal(idx, st_dare[f"{name}.indices"].long())  # the same mask as dare
    assert fixed.kept == dare.kept
    chosen = compress(root / "base", root / "ft", tmp_path / "g", "darex-q", 0.1, progress=False)
    assert 0.1 < chosen.q <= 1.0
    assert _stored(tmp_path / "g")[0]["q"] == chosen.q
    per = compress(root / "base", root / "ft", tmp_path / "p", "darex-q", 0.1, per_layer_q=True,
                   progress=False)
    assert len(per.q) == 2 and all(0.1 < q <= 1.0 for q in per.q)
    _, st = _stored(tmp_path / "p")
    for name, d, idx, val in _pairs(st, deltas):
        q = per.q[int(name.split(".")[2])]
        torch.testing.assert_close(val, d[idx] / q, rtol=1e-5, atol=0)
    with pytest.raises(CompressionError, match="q must be"):
        compress(root / "base", root / "ft", tmp_path / "y", "darex-q", 0.3, q=0.2, progress=False)


def test_seed_determinism(models, tmp_path):
    root, _, _ = models
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        compress(root / "base", root / "ft", tmp_path / name, "dare", 0.2, seed=seed,
                 progress=False)
    data = {n: (tmp_path / n / "delta.safetensors").read_bytes() for n in "abc"}
    assert data["a"] == data["b"] != data["c"]


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_density_refused(models, tmp_path, density):
    root, _, _ = models
    with pytest.raises(CompressionError, match="density"):
        compress(root / "base", root / "ft", tmp_path / "o", "dare", density, progress=False)


def test_unservable_changes_and_mismatches_refused(models, tmp_path):
    root, base, _ = models
    for touched in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                    "model.layers.0.input_layernorm.weight"):
        ft = _finetune(base, tmp_path / touched, seed=2, touch=touched)
        with pytest.raises(CompressionError, match=f"changes {touched}.*never pruned"):
            compress(root / "base", ft, tmp_path / "o", "dare", 0.5, progress=False)
    other = make_model(str(tmp_path / "other"), "llama", intermediate_size=128)
    with pytest.raises(CompressionError, match="intermediate_size"):
        compress(root / "base", tmp_path / "other", tmp_path / "o", "dare", 0.5, progress=False)
    del other
    ft = _finetune(base, tmp_path / "tok", seed=3)
    tok = json.loads((ft / "tokenizer.json").read_text())
    tok["model"]["vocab"]["<pad>"] = 999
    (ft / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CompressionError, match="tokenizers differ"):
        compress(root / "base", ft, tmp_path / "o", "dare", 0.5, progress=False)


def test_cli(models, tmp_path, capsys):
    root, _, _ = models
    argv = ["compress", "--base", str(root / "base"), "--finetuned", str(root / "ft"),
            "--out", str(tmp_path / "cli"), "--method", "darex-q", "--density", "0.1",
            "--q", "0.3", "--seed", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "q 0.3" in out
    with pytest.raises(SystemExit):
        main(argv[:-6] + ["--density", "0"])
    assert "--density" in capsys.readouterr().err


def test_store_validates_compressed_delta(models, tmp_path):
    root, _, _ = models
    out = tmp_path / "v"
    compress(root / "base", root / "ft", out, "dare", 0.3, progress=False)
    shapes = BaseShapes.from_model_config(ModelConfig.from_dir(str(root / "base")))
    ok = Limits(base_model_ids=("served-name", "base"))
    assert validate_adapter_dir(out, shapes, ok).kind == "sparse_delta"
    with pytest.raises(InvalidAdapterError, match="made from base model 'base'"):
        validate_adapter_dir(out, shapes, Limits(base_model_ids=("other",)))
    st = load_file(str(out / "delta.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight.indices"
    good = st[key].clone()
    for bad, why in ((torch.cat([good[:-1], good[:1]]), "duplicate"),
                     (torch.cat([good[:-1], torch.tensor([64 * 64], dtype=good.dtype)]),
                      "out of range")):
        st[key] = bad
        save_file(st, str(out / "delta.safetensors"))
        with pytest.raises(InvalidAdapterError, match=why):
            validate_adapter_dir(out, shapes, ok)
