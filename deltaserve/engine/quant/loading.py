"""Which quantization a base gets, and the loader hook that builds the quantized projections.

`--quantization` follows vLLM's flag: unset = what the checkpoint's config.json
`quantization_config.quant_method` says (gptq, awq), else none. int8 / int4 quantize a
full-precision checkpoint while it loads; gptq / awq repack the checkpoint's packed tensors.
Only the decoder projections are quantized: embeddings and lm_head stay in the serving dtype
(as GPTQ and AWQ leave them).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable

import torch

from deltaserve.engine.layers.linear import AdapterLinear
from deltaserve.engine.quant import awq, gptq
from deltaserve.engine.quant.formats import QuantWeight, stack
from deltaserve.engine.quant.linear import QuantLinear
from deltaserve.engine.quant.quantize import quantize_int4, quantize_int8

logger = logging.getLogger(__name__)

METHODS = ("none", "int8", "int4", "gptq", "awq")
_PROJ = re.compile(r"^(model\.layers\.\d+\.(?:self_attn|mlp)\.[a-z]+_proj)\.([a-z_]+)$")
_AT_LOAD = {"int8": quantize_int8, "int4": quantize_int4}
_PACKED = {"gptq": gptq, "awq": awq}
# (HF tensor name) -> (our parameter name, shard index or None, sub-module): the loader's map
Target = Callable[[str], tuple[str, "int | None", str]]


def checkpoint_method(model_dir: str) -> tuple[str | None, dict]:
    """The checkpoint's own quantization (gptq | awq | None) and its quantization_config."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):  # not a model directory: ModelConfig.from_dir says so
        return None, {}
    with open(path) as f:
        qc = json.load(f).get("quantization_config") or {}
    method = str(qc.get("quant_method", "")).lower() or None
    if method == "bitsandbytes":
        kind = "NF4/FP4 4-bit" if qc.get("load_in_4bit") else "int8 (LLM.int8)"
        raise ValueError(
            f"bitsandbytes {kind} checkpoints are not supported by the native engine (it has "
            "no bitsandbytes dequantiser): serve the full-precision base with --quantization "
            "int8 or int4 (quantized at load), or a GPTQ/AWQ export of it"
        )
    if method not in (None, "gptq", "awq"):
        raise ValueError(f"quantization method {method!r} in config.json is not supported "
                         "(supported: gptq, awq; or int8/int4 from a full-precision checkpoint)")
    return method, qc


def resolve(requested: str | None, model_dir: str) -> tuple[str, dict]:
    """The method to load with (one of METHODS) and the checkpoint's quantization_config."""
    found, qc = checkpoint_method(model_dir)
    if requested is None:
        return found or "none", qc
    if requested not in METHODS:
        raise ValueError(f"quantization must be one of {', '.join(METHODS)}, got {requested!r}")
    if found and requested != found:
        raise ValueError(f"the checkpoint is {found}-quantized: use --quantization {found} "
                         "(or leave it unset)")
    if not found and requested in _PACKED:
        raise ValueError(f"--quantization {requested} needs a {requested} checkpoint "
                         "(config.json has no quantization_config)")
    return requested, qc


class QuantLoader:
    """Collects the projection tensors while the loader streams the checkpoint, then attaches
    one QuantLinear per AdapterLinear."""

    def __init__(self, method: str, qc: dict, dtype: torch.dtype, target: Target):
        self.method, self.qc, self.dtype, self.target = method, qc, dtype, target
        self.fmt = _PACKED.get(method)
        if self.fmt is not None:
            self.fmt.check_config(qc)
        self.suffixes = self.fmt.SUFFIXES if self.fmt else ("weight",)
        self.raw: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self.parts: dict[tuple[str, int], QuantWeight] = {}

    def strip(self, model: torch.nn.Module) -> None:
        """Drop the full-precision projection weights before the model is allocated."""
        for m in model.modules():
            if isinstance(m, AdapterLinear):
                m.register_parameter("weight", None)

    def take(self, name: str, get: Callable[[], torch.Tensor]) -> bool:
        """Consume `name` if it is part of a quantized projection (True) or leave it (False)."""
        m = _PROJ.match(name)
        if m is not None and self.fmt is not None and m.group(2) == "weight":
            raise ValueError(f"{name}: a full-precision projection inside a {self.method} "
                             "checkpoint is not supported (every decoder projection must be packed)")
        if m is None or m.group(2) not in self.suffixes:
            return False
        pname, shard, _ = self.target(f"{m.group(1)}.weight")
        key = (pname.removesuffix(".weight"), shard or 0)
        if self.fmt is None:  # quantize now: the full-precision shard is dropped at once
            self.parts[key] = _AT_LOAD[self.method](get(), self.dtype)
        else:
            self.raw.setdefault(key, {})[m.group(2)] = get()
        return True

    def finish(self, model: torch.nn.Module, device: torch.device) -> None:
        for key, tensors in self.raw.items():
            missing = [s for s in self.fmt.REQUIRED if s not in tensors]
            if missing:
                raise ValueError(f"{self.method} checkpoint lacks {key[0]} shard {key[1]}: {missing}")
            self.parts[key] = self.fmt.to_engine(tensors, self.qc, self.dtype)
        self.raw.clear()
        for mname, m in model.named_modules():
            if isinstance(m, AdapterLinear):
                m.quant = QuantLinear(self.method, self._shards(mname, m)).to(device)
        logger.info("base projections quantized: %s", describe(self.method, self.qc))

    def _shards(self, mname: str, m: AdapterLinear) -> list[QuantWeight]:
        shards = []
        for i, size in enumerate(m.out_sizes):
            p = self.parts.pop((mname, i), None)
            if p is None:
                raise ValueError(f"checkpoint is missing tensors: {mname} ({m.names[i]})")
            if p.out_features != size or p.in_features != m.in_features:
                raise ValueError(
                    f"shape mismatch for {mname} ({m.names[i]}): checkpoint "
                    f"{(p.out_features, p.in_features)} vs model {(size, m.in_features)}"
                )
            shards.append(p)
        return stack(shards)


def describe(method: str, qc: dict) -> str:
    """One line for the start-up log: the method and its parameters."""
    if method == "int8":
        return "int8 weight-only, per-output-channel symmetric"
    if method == "int4":
        return "int4 weight-only, asymmetric, groups of min(128, in-features)"
    keys = ("bits", "group_size", "desc_act", "sym", "checkpoint_format", "zero_point", "version")
    return f"{method} " + ", ".join(f"{k}={qc[k]}" for k in keys if k in qc)
