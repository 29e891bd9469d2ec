"""Quantized checkpoints of the tiny llama for the quantized-base oracles, and the plain
(dequantised) checkpoints transformers runs as their reference."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.quant_helpers import awq_tensors, gptq_tensors, plain_dequant, quantize_known

PROJ = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.[a-z]+_proj\.weight$")
_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")


def _copy_side_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in _SIDE_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def write_plain(src: Path, dst: Path, weights: dict[str, torch.Tensor]) -> Path:
    """src's checkpoint with the projection weights replaced by `weights` (dequantised)."""
    _copy_side_files(src, dst)
    state = load_file(str(src / "model.safetensors"))
    state.update({k: v.contiguous() for k, v in weights.items()})
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def engine_dequantised(model) -> dict[str, torch.Tensor]:
    """HF-named float32 projection weights as the engine's quantized model dequantises them."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        for block, lin in (("self_attn", layer.self_attn.qkv_proj), ("self_attn", layer.self_attn.o_proj),
                           ("mlp", layer.mlp.gate_up_proj), ("mlp", layer.mlp.down_proj)):
            w = lin.quant.dequantize(torch.float32)
            for name, off, size in zip(lin.names, lin.offsets, lin.out_sizes, strict=True):
                out[f"model.layers.{i}.{block}.{name}.weight"] = w[off : off + size]
    return out


def write_packed(src: Path, dst: Path, method: str, qc: dict, seed: int = 0):
    """A GPTQ or AWQ checkpoint of src (quantized by plain min/max, per-module act order for
    GPTQ desc_act), and the dequantised weights it holds: (dst, {HF name: [out, in]})."""
    _copy_side_files(src, dst)
    state = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    out, plain = {}, {}
    for name, w in state.items():
        if not PROJ.match(name):
            out[name] = w
            continue
        gs = qc["group_size"]
        g_idx = torch.arange(w.shape[1]) // gs
        if qc.get("desc_act"):  # every module its own column order, as GPTQ act-order gives
            g_idx = g_idx[torch.randperm(w.shape[1], generator=g)]
        q, z, s = quantize_known(w.float(), qc["bits"], gs, g_idx, qc.get("sym", False))
        prefix = name.removesuffix(".weight")
        t = gptq_tensors(q, z, s, g_idx, qc["bits"]) if method == "gptq" else awq_tensors(q, z, s)
        out.update({f"{prefix}.{k}": v for k, v in t.items()})
        plain[name] = plain_dequant(q, z, s, g_idx)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": method, **qc}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst, plain


def write_sparse_delta(src: Path, dst: Path, density: float = 0.1, seed: int = 7):
    """A sparse_delta adapter touching every projection of src: (dst, {HF name: dense Δ})."""
    dst.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors, dense = {}, {}
    for name, w in load_file(str(src / "model.safetensors")).items():
        if not PROJ.match(name):
            continue
        idx = torch.randperm(w.numel(), generator=g)[: int(w.numel() * density)].sort().values
        vals = torch.randn(idx.numel(), generator=g) * w.std() * 0.5
        tensors[f"{name}.indices"], tensors[f"{name}.values"] = idx, vals
        dense[name] = torch.zeros(w.numel()).index_put_((idx,), vals).view(w.shape)
    save_file(tensors, str(dst / "delta.safetensors"))
    (dst / "deltaserve_adapter.json").write_text(json.dumps(
        {"kind": "sparse_delta", "method": "magnitude", "density": density,
         "weights": "delta.safetensors"}))
    return dst, dense
