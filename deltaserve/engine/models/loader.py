"""Build the decoder from an HF model directory: config.json + safetensors (sharded or not)."""

from __future__ import annotations

import glob
import json
import logging
import os
import re

import torch
from safetensors import safe_open

from deltaserve.engine.config import ModelConfig
from deltaserve.engine.models.decoder import CausalLM
from deltaserve.engine.quant.loading import QuantLoader, resolve

logger = logging.getLogger(__name__)

# HF parameter name -> (our fused parameter, index of the shard inside it).
_FUSED = re.compile(r"^(model\.layers\.\d+\.)(self_attn|mlp)\.(q|k|v|gate|up)_proj\.(weight|bias)$")
_SHARD = {"q": ("qkv_proj", 0), "k": ("qkv_proj", 1), "v": ("qkv_proj", 2),
          "gate": ("gate_up_proj", 0), "up": ("gate_up_proj", 1)}
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def safetensors_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, n) for n in names]
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise ValueError(f"no safetensors weights in {model_dir!r} (pickle checkpoints are refused)")
    return files


def _target(name: str) -> tuple[str, int | None, str]:
    """Map an HF tensor name to (our parameter name, shard index or None, sub-module)."""
    m = _FUSED.match(name)
    if m:
        prefix, block, proj, kind = m.groups()
        fused, shard = _SHARD[proj]
        return f"{prefix}{block}.{fused}.{kind}", shard, proj
    return name, None, ""


def load_model(
    model_dir: str, cfg: ModelConfig, max_positions: int, device: torch.device, dtype: torch.dtype,
    quantization: str | None = "none",
) -> CausalLM:
    """quantization: engine/quant/loading.py METHODS, or None to follow the checkpoint."""
    with torch.device("meta"):
        model = CausalLM(cfg, max_positions, torch.device("meta"))
    method, qc = resolve(quantization, model_dir)
    quant = None if method == "none" else QuantLoader(method, qc, dtype, _target)
    if quant is not None:
        quant.strip(model)
    model = model.to_empty(device=device).to(dtype)
    model.model.build_rotary(max_positions, device)
    params = dict(model.named_parameters())
    loaded: dict[str, set[int | None]] = {}
    for path in safetensors_files(model_dir):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                if _IGNORED.search(name) or (cfg.tie_word_embeddings and name == "lm_head.weight"):
                    continue
                if quant is not None and quant.take(name, lambda n=name: f.get_tensor(n)):
                    continue
                pname, shard, _ = _target(name)
                if pname not in params:
                    raise ValueError(f"unexpected tensor {name!r} in {os.path.basename(path)}")
                _copy_into(params[pname], f.get_tensor(name), pname, shard, model)
                loaded.setdefault(pname, set()).add(shard)
    _check_complete(params, loaded)
    if quant is not None:
        quant.finish(model, device)
    model.quantization = method  # what the base was loaded as, for logs and /v1/models
    model.eval()
    return model


def _copy_into(param: torch.Tensor, tensor: torch.Tensor, pname: str, shard, model) -> None:
    if shard is None:
        dst = param.data
    else:
        linear = model.get_submodule(pname.rsplit(".", 1)[0])
        off, size = linear.offsets[shard], linear.out_sizes[shard]
        dst = param.data[off : off + size]
    if tuple(dst.shape) != tuple(tensor.shape):
        raise ValueError(
            f"shape mismatch for {pname}: checkpoint {tuple(tensor.shape)} vs model {tuple(dst.shape)}"
        )
    dst.copy_(tensor.to(dst.dtype))


def _check_complete(params: dict, loaded: dict) -> None:
    missing = []
    for name in params:
        got = loaded.get(name)
        if got is None:
            missing.append(name)
        elif None not in got:
            linear_shards = {0, 1, 2} if "qkv_proj" in name else {0, 1}
            if got != linear_shards:
                missing.append(f"{name} (shards {sorted(linear_shards - got)})")
    if missing:
        raise ValueError(f"checkpoint is missing tensors: {', '.join(missing[:8])}")
