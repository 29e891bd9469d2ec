"""PEFT LoRA directories: read and check adapter_config.json + adapter_model.safetensors.

Only safetensors are read (a pickle .bin is refused, never unpickled). The scaling
(lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA, per-module via rank/alpha patterns) is
folded into B at load time so the batched op needs no per-row scale.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass

import torch
from safetensors import safe_open

from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.ops.lora import FUSED_MODULES, TARGET_MODULES, LoRATensors

_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|gate_up_proj)"
    r"\.lora_([AB])(?:\.[^.]+)?\.weight$"
)


@dataclass
class LoRAAdapter:
    """A loaded LoRA: per (layer, module) A [r, d_in] and scaled B [d_out, r]."""

    name: str
    rank: int
    tensors: LoRATensors

    # The tensors never change after loading; the pool and scheduler ask for sizes every step.
    @functools.cached_property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.tensors.values())

    @functools.cached_property
    def _numel(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.tensors.values())

    def device_nbytes(self, elem: int) -> int:
        """Bytes on the device with `elem`-byte elements (the compute dtype)."""
        return self._numel * elem

    def to(self, device: torch.device, dtype: torch.dtype) -> LoRAAdapter:
        moved = {k: (a.to(device, dtype), b.to(device, dtype)) for k, (a, b) in self.tensors.items()}
        return LoRAAdapter(self.name, self.rank, moved)


def read_lora_config(path: str) -> dict:
    cfg_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(cfg_path):
        raise AdapterError(f"{path!r} is not a PEFT LoRA directory: no adapter_config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"adapter_config.json is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise AdapterError("adapter_config.json must hold a JSON object")
    _check_supported(cfg)
    return cfg


def _check_supported(cfg: dict) -> None:
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"unsupported peft_type {peft_type!r}: only LORA is served")
    if cfg.get("use_dora"):
        raise AdapterError("DoRA adapters (use_dora=true) are not supported")
    if cfg.get("fan_in_fan_out"):
        raise AdapterError("fan_in_fan_out=true (Conv1D-style weights) is not supported")
    if cfg.get("bias", "none") not in ("none", None):
        raise AdapterError(f"LoRA bias={cfg['bias']!r} is not supported (only 'none')")
    if cfg.get("modules_to_save"):
        raise AdapterError("modules_to_save (fully trained extra modules) is not supported")
    if cfg.get("target_parameters"):
        raise AdapterError(
            f"LoRA on parameters (target_parameters {cfg['target_parameters']}, e.g. the MoE "
            "experts of Mixtral, which PEFT saves this way) is not served: only LoRA on "
            f"modules {sorted(TARGET_MODULES)}"
        )
    targets = cfg.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])
    bad = [t for t in names if t.split(".")[-1] not in TARGET_MODULES and not _is_regex(t)]
    if bad:
        raise AdapterError(
            f"unsupported target modules {bad}: supported are {sorted(TARGET_MODULES)}"
            " (embedding, lm_head and MoE expert/router LoRA are not served)"
        )


def _is_regex(t: str) -> bool:
    return any(c in t for c in "*()[]|\\^$")


def _pattern_value(patterns: dict, module_key: str):
    """PEFT's rule: the first pattern that matches the end of the full module name wins."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_key):
            return value
    return None


def _scaling(cfg: dict, module_key: str, rank: int) -> float:
    """module_key: the full HF name, e.g. model.layers.0.self_attn.q_proj."""
    alpha = _pattern_value(cfg.get("alpha_pattern"), module_key)
    if alpha is None:
        alpha = cfg.get("lora_alpha", 8)
    if cfg.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank


def load_lora(
    name: str,
    path: str,
    in_sizes: dict[str, int],
    out_sizes: dict[str, int],
    num_layers: int,
    max_rank: int,
) -> LoRAAdapter:
    """Load and validate a PEFT LoRA against the base model's shapes; weights stay on CPU."""
    cfg = read_lora_config(path)
    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        if os.path.isfile(os.path.join(path, "adapter_model.bin")):
            raise AdapterError("pickle weights (adapter_model.bin) are refused; use safetensors")
        raise AdapterError("adapter_model.safetensors is missing")
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    full_names: dict[tuple[int, str], str] = {}
    try:
        with safe_open(weights, framework="pt", device="cpu") as f:
            for key in f.keys():
                m = _KEY.match(key)
                if m is None:
                    raise AdapterError(f"unsupported tensor {key!r} in adapter (only LoRA on "
                                          f"{', '.join(sorted(TARGET_MODULES))})")
                layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
                pairs.setdefault((layer, module), {})[ab] = f.get_tensor(key)
                full_names[(layer, module)] = m.group(0).split(".lora_")[0].removeprefix("base_model.model.")
    except AdapterError:
        raise
    except Exception as e:  # malformed safetensors header or data
        raise AdapterError(f"cannot read adapter_model.safetensors: {e}") from None
    if not pairs:
        raise AdapterError("adapter has no LoRA tensors")
    tensors: LoRATensors = {}
    max_seen = 0
    for (layer, module), ab in sorted(pairs.items()):
        a, b = _check_pair(layer, module, ab, in_sizes, out_sizes, num_layers, max_rank)
        rank = a.shape[0]
        max_seen = max(max_seen, rank)
        scale = _scaling(cfg, full_names[(layer, module)], rank)
        a, b = a.float().contiguous(), b.float() * scale
        parts = FUSED_MODULES.get(module, (module,))
        # A fused module's LoRA (Phi-3's qkv_proj): each part keeps A, B's rows are split.
        for part, b_part in zip(parts, b.split([out_sizes[m] for m in parts]), strict=True):
            if (layer, part) in tensors:
                raise AdapterError(f"layer {layer}: {part} is adapted twice (also via {module})")
            tensors[(layer, part)] = (a, b_part.contiguous())
    return LoRAAdapter(name, max_seen, tensors)


def _check_pair(layer, module, ab, in_sizes, out_sizes, num_layers, max_rank):
    where = f"layer {layer} {module}"
    if layer >= num_layers:
        raise AdapterError(f"{where}: the base model has only {num_layers} layers")
    if module not in in_sizes:
        raise AdapterError(f"{where}: the base model has no module {module} (qkv_proj and "
                           "gate_up_proj exist only in fused checkpoints such as Phi-3's)")
    if set(ab) != {"A", "B"}:
        raise AdapterError(f"{where}: lora_A and lora_B must both be present")
    a, b = ab["A"], ab["B"]
    if a.dim() != 2 or b.dim() != 2 or not a.is_floating_point() or not b.is_floating_point():
        raise AdapterError(f"{where}: LoRA weights must be 2-D floating-point tensors")
    rank = a.shape[0]
    if rank < 1 or rank > max_rank:
        raise AdapterError(f"{where}: rank {rank} exceeds the server's max LoRA rank {max_rank}")
    if a.shape[1] != in_sizes[module] or b.shape != (out_sizes[module], rank):
        raise AdapterError(
            f"{where}: shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit the base model "
            f"(expected A(r, {in_sizes[module]}) B({out_sizes[module]}, r))"
        )
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise AdapterError(f"{where}: weights contain NaN or Inf")
    return a, b
