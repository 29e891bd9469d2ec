"""sparse_delta adapters: a pruned full fine-tune, `Δ = W_ft − W_base`, kept as indices + values.

Directory: `deltaserve_adapter.json` ({"kind": "sparse_delta", "weights": "delta.safetensors",
...}) and the safetensors file with, per changed projection P (HF name, e.g.
`model.layers.0.self_attn.q_proj.weight`), `P.indices` (1-D int32/int64, flat row-major
positions in P) and `P.values` (1-D float, rescaling already applied). Only the q/k/v/o and
gate/up/down projections can be served — or, for fused checkpoints (Phi-3), qkv_proj and
gate_up_proj, split on load by rows: a delta of embeddings, lm_head or a norm is refused.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.ops.lora import FUSED_MODULES
from deltaserve.engine.ops.sparse_delta import DeltaTensors

KIND_FILE = "deltaserve_adapter.json"
_KEY = re.compile(
    r"^model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|gate_up_proj)"
    r"\.weight\.(indices|values)$"
)


@dataclass
class SparseDeltaAdapter:
    """A loaded delta: per (layer, module) flat indices [nnz] (long, ascending) and values [nnz]."""

    name: str
    tensors: DeltaTensors
    config: dict = field(default_factory=dict)

    # The tensors never change after loading; the pool and scheduler ask for sizes every step.
    @functools.cached_property
    def nbytes(self) -> int:
        return sum(i.nbytes + v.nbytes for i, v in self.tensors.values())

    def device_nbytes(self, elem: int) -> int:
        """Bytes on the device: long indices plus values in the compute dtype (`elem` bytes)."""
        return self.nnz * (8 + elem)

    @functools.cached_property
    def nnz(self) -> int:
        return sum(v.numel() for _, v in self.tensors.values())

    def to(self, device: torch.device, dtype: torch.dtype) -> SparseDeltaAdapter:
        moved = {k: (i.to(device), v.to(device, dtype)) for k, (i, v) in self.tensors.items()}
        return SparseDeltaAdapter(self.name, moved, self.config)


def read_delta_config(path: str) -> dict:
    cfg_path = os.path.join(path, KIND_FILE)
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"cannot read {KIND_FILE}: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("kind") != "sparse_delta":
        raise AdapterError(f"{KIND_FILE} must hold an object with kind 'sparse_delta'")
    return cfg


def _weights_path(path: str, cfg: dict) -> str:
    rel = cfg.get("weights", "delta.safetensors")
    root = os.path.realpath(path)
    full = os.path.realpath(os.path.join(root, str(rel)))
    if not isinstance(rel, str) or os.path.commonpath([root, full]) != root:
        raise AdapterError("sparse_delta `weights` must be a path inside the adapter directory")
    if not os.path.isfile(full):
        raise AdapterError(f"sparse_delta weights {rel!r} are missing")
    return full


def load_sparse_delta(
    name: str,
    path: str,
    in_sizes: dict[str, int],
    out_sizes: dict[str, int],
    num_layers: int,
) -> SparseDeltaAdapter:
    """Load and validate a sparse delta against the base model's shapes; tensors stay on CPU."""
    cfg = read_delta_config(path)
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    try:
        with safe_open(_weights_path(path, cfg), framework="pt", device="cpu") as f:
            for key in f.keys():
                m = _KEY.match(key)
                if m is None:
                    raise AdapterError(
                        f"unsupported tensor {key!r} in sparse delta: only the q/k/v/o/gate/up/"
                        "down (or fused qkv/gate_up) projection weights can be served as a "
                        "delta (embeddings, lm_head, norms and MoE experts/routers cannot)"
                    )
                parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = f.get_tensor(key)
    except AdapterError:
        raise
    except Exception as e:  # malformed safetensors
        raise AdapterError(f"cannot read sparse delta weights: {e}") from None
    tensors: DeltaTensors = {}
    for (layer, module), p in sorted(parts.items()):
        idx, val = _check_part(layer, module, p, in_sizes, out_sizes, num_layers)
        for part, piece in _split_fused(module, idx, val, in_sizes, out_sizes).items():
            if (layer, part) in tensors:
                raise AdapterError(f"layer {layer}: {part} has two deltas (also via {module})")
            tensors[(layer, part)] = piece
    return SparseDeltaAdapter(name, tensors, cfg)


def _split_fused(module: str, idx: torch.Tensor, val: torch.Tensor, in_sizes, out_sizes
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A fused module's delta (Phi-3's qkv_proj [q + 2kv, d_in]) as one delta per part: each
    part owns a block of rows, so its flat indices are the fused ones minus the block's start
    (still ascending). Any other module: itself."""
    parts = FUSED_MODULES.get(module)
    if parts is None:
        return {module: (idx, val)}
    d_in, out, row0 = in_sizes[module], {}, 0
    for part in parts:
        lo, hi = row0 * d_in, (row0 + out_sizes[part]) * d_in
        keep = (idx >= lo) & (idx < hi)
        if bool(keep.any()):
            out[part] = ((idx[keep] - lo).contiguous(), val[keep].contiguous())
        row0 += out_sizes[part]
    return out


def _check_part(layer, module, p, in_sizes, out_sizes, num_layers) -> tuple[torch.Tensor, torch.Tensor]:
    where = f"layer {layer} {module}"
    if layer >= num_layers:
        raise AdapterError(f"{where}: the base model has only {num_layers} layers")
    if module not in in_sizes:
        raise AdapterError(f"{where}: the base model has no module {module} (qkv_proj and "
                           "gate_up_proj exist only in fused checkpoints such as Phi-3's)")
    if set(p) != {"indices", "values"}:
        raise AdapterError(f"{where}: .indices and .values must both be present")
    idx, val = p["indices"], p["values"]
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise AdapterError(f"{where}: indices must be a 1-D int32/int64 tensor")
    if val.dim() != 1 or not val.is_floating_point() or val.shape != idx.shape:
        raise AdapterError(f"{where}: values must be 1-D floating point, one per index")
    size = in_sizes[module] * out_sizes[module]
    idx = idx.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise AdapterError(f"{where}: indices out of range [0, {size})")
    # Ascending order is the canonical form the stacking relies on (ops/sparse_delta.py).
    idx, order = torch.sort(idx)
    if bool((idx[1:] == idx[:-1]).any()):
        raise AdapterError(f"{where}: duplicate indices")
    val = val[order]
    if not torch.isfinite(val).all():
        raise AdapterError(f"{where}: values contain NaN or Inf")
    return idx.contiguous(), val.float().contiguous()
