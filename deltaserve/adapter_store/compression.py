"""`deltaserve compress`: a full fine-tune → a `sparse_delta` adapter (DARE, DAREx-q, magnitude).

For every q/k/v/o/gate/up/down projection P: `Δ = W_ft − W_base` (float32), then
- dare:      keep each entry with probability `density` (a Bernoulli mask seeded per parameter
             from `seed` and P's name), rescale the kept ones by 1/density;
- darex-q:   the same mask, rescaled by 1/q with density < q ≤ 1; q is given (`q`), chosen
             globally on a calibration batch, or one per decoder layer (darex.py explains how);
- magnitude: keep the round(density·numel) largest |Δ| of each matrix, no rescale.
Exact zeros are not stored. Embeddings, lm_head, norms and biases are never pruned: a fine-tune
that changes any of them is refused (the sparse_delta kind cannot serve those changes).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from deltaserve.adapter_store.delta_keys import PROJ_KEY, layer_of

logger = logging.getLogger(__name__)

METHODS = ("dare", "darex-q", "magnitude")
_SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


class CompressionError(ValueError):
    """The inputs cannot be compressed (bad density, mismatched models, unservable changes)."""


@dataclass
class CompressionResult:
    out_dir: Path
    method: str
    density: float
    kept: int
    """Delta entries stored."""
    total: int
    """Entries of the projection matrices."""
    delta_bytes: int
    finetune_bytes: int
    q: float | list[float] | None = None
    config: dict = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        """delta.safetensors bytes / the full fine-tune's safetensors bytes."""
        return self.delta_bytes / max(self.finetune_bytes, 1)


def check_density(density: float) -> None:
    if not (0.0 < density <= 1.0) or density != density:
        raise CompressionError(f"density must be in (0, 1], got {density}")


def load_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF model directory's *.safetensors files (sharded or not)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CompressionError(f"{model_dir} has no *.safetensors weights (pickle is not read)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for k in st.keys():
                state[k] = st.get_tensor(k)
    return state


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CompressionError(f"{model_dir} is not a model directory: no config.json")
    return json.loads(path.read_text())


def check_compatible(base_dir: Path, ft_dir: Path) -> None:
    """Refuse a fine-tune whose architecture, shapes or tokenizer differ from the base."""
    a, b = _read_config(base_dir), _read_config(ft_dir)
    diff = [k for k in _SHAPE_FIELDS if a.get(k) != b.get(k)]
    if diff:
        raise CompressionError(
            "base and fine-tune differ in " + ", ".join(f"{k} ({a.get(k)} vs {b.get(k)})" for k in diff)
        )
    ta, tb = base_dir / "tokenizer.json", ft_dir / "tokenizer.json"
    if ta.is_file() != tb.is_file():
        raise CompressionError("only one of base and fine-tune has a tokenizer.json")
    if ta.is_file():
        va = json.loads(ta.read_text()).get("model", {}).get("vocab")
        vb = json.loads(tb.read_text()).get("model", {}).get("vocab")
        if va != vb:
            raise CompressionError("base and fine-tune tokenizers differ (different vocabularies)")


def split_deltas(base: dict[str, torch.Tensor], ft: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 deltas of the projections; refuses any other change or a shape mismatch."""
    if base.keys() != ft.keys():
        missing = sorted(base.keys() ^ ft.keys())[:5]
        raise CompressionError(f"base and fine-tune hold different tensors, e.g. {missing}")
    deltas = {}
    for name in sorted(base):
        b, f = base[name], ft[name]
        if b.shape != f.shape:
            raise CompressionError(f"{name}: shape {tuple(f.shape)} in the fine-tune, "
                                   f"{tuple(b.shape)} in the base")
        if PROJ_KEY.match(name):
            deltas[name] = f.float() - b.float()
        elif not torch.equal(b, f):
            raise CompressionError(
                f"the fine-tune changes {name}: embeddings, lm_head, norms and biases are never "
                "pruned and a sparse_delta cannot carry them; fine-tune with them frozen"
            )
    return deltas


def bernoulli_mask(name: str, shape: torch.Size, density: float, seed: int) -> torch.Tensor:
    """Keep-mask, True with probability `density`; depends only on (seed, name, shape)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.rand(shape, generator=g) < density


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density · numel) largest |Δ| entries."""
    k = max(1, round(density * delta.numel())) if density > 0 else 0
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[torch.topk(delta.abs().flatten(), k).indices] = True
    return mask.view(delta.shape)


def masks_for(deltas: dict[str, torch.Tensor], method: str, density: float, seed: int,
              progress: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, d in tqdm(deltas.items(), desc="masks", disable=not progress, unit="matrix"):
        out[name] = (magnitude_mask(d, density) if method == "magnitude"
                     else bernoulli_mask(name, d.shape, density, seed))
    return out


def sparse_tensors(deltas: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                   scale: dict[str, float], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """P.indices (flat row-major) and P.values (Δ[kept] · scale[P]) for the changed entries."""
    out = {}
    for name, d in deltas.items():
        keep = masks[name].flatten() & (d.flatten() != 0)
        idx = keep.nonzero().flatten()
        if idx.numel() == 0:
            continue
        idx_dtype = torch.int32 if d.numel() < 2**31 else torch.int64
        out[f"{name}.indices"] = idx.to(idx_dtype)
        out[f"{name}.values"] = (d.flatten()[idx] * scale[name]).to(dtype).contiguous()
    return out


def _choose_scale(base_dir: Path, base: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor],
                  masks: dict[str, torch.Tensor], method: str, density: float, q: float | None,
                  per_layer_q: bool, calibration: Path | None, num_layers: int,
                  progress: bool) -> tuple[dict[str, float], float | list[float] | None]:
    """Per-parameter rescale factor and the q (None, one float, or one per layer) used."""
    if method == "magnitude":
        return {n: 1.0 for n in deltas}, None
    if method == "dare":
        return {n: 1.0 / density for n in deltas}, None
    from deltaserve.adapter_store import darex  # transformers only when it is needed

    if q is not None:
        if not density < q <= 1.0 and not (density == q == 1.0):
            raise CompressionError(f"q must be in (density, 1] = ({density}, 1], got {q}")
        chosen: float | list[float] = q
    elif density == 1.0:
        chosen = 1.0
    else:
        texts = darex.read_calibration(calibration)
        if per_layer_q:
            chosen = darex.choose_per_layer_q(base_dir, base, deltas, masks, density, texts,
                                              num_layers)
        else:
            chosen = darex.choose_global_q(base_dir, base, deltas, masks, density, texts,
                                           progress)
    if isinstance(chosen, list):
        return {n: 1.0 / chosen[layer_of(n)] for n in deltas}, chosen
    return {n: 1.0 / chosen for n in deltas}, chosen


def compress(
    base_dir: Path,
    finetuned_dir: Path,
    out_dir: Path,
    method: str,
    density: float,
    *,
    seed: int = 0,
    q: float | None = None,
    per_layer_q: bool = False,
    calibration: Path | None = None,
    base_model_id: str | None = None,
    progress: bool = True,
) -> CompressionResult:
    """Write `out_dir` = deltaserve_adapter.json + delta.safetensors; see the module docstring.

    `base_model_id` goes into the config (default: the base directory's name, which is the id
    `deltaserve serve --model DIR` gives the base model by default).
    """
    if method not in METHODS:
        raise CompressionError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_density(density)
    base_dir, finetuned_dir, out_dir = Path(base_dir), Path(finetuned_dir), Path(out_dir)
    check_compatible(base_dir, finetuned_dir)
    base, ft = load_state(base_dir), load_state(finetuned_dir)
    deltas = split_deltas(base, ft)
    del ft
    masks = masks_for(deltas, method, density, seed, progress)
    num_layers = int(_read_config(base_dir)["num_hidden_layers"])
    scale, chosen_q = _choose_scale(base_dir, base, deltas, masks, method, density, q,
                                    per_layer_q, calibration, num_layers, progress)
    dtype = next((base[n].dtype for n in deltas), torch.float32)
    tensors = sparse_tensors(deltas, masks, scale, dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "delta.safetensors"
    save_file(tensors, str(weights))
    kept = sum(t.numel() for k, t in tensors.items() if k.endswith(".values"))
    total = sum(d.numel() for d in deltas.values())
    config = {
        "kind": "sparse_delta",
        "base_model": base_model_id or base_dir.resolve().name,
        "method": method, "density": density, "q": chosen_q, "seed": seed,
        "weights": weights.name, "kept": kept, "total": total,
    }
    (out_dir / "deltaserve_adapter.json").write_text(json.dumps(config, indent=2) + "\n")
    ft_bytes = sum(f.stat().st_size for f in finetuned_dir.glob("*.safetensors"))
    return CompressionResult(out_dir, method, density, kept, total, weights.stat().st_size,
                             ft_bytes, chosen_q, config)
