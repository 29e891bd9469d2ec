"""Validation of an untrusted adapter directory before anything is registered.

Order matters: file names and sizes (paths.py) → configs → safetensors headers (names, dtypes,
shapes, rank against the base model and the limits) → only then tensor values (NaN/Inf). The
PEFT LoRA rules mirror the engine's loader (deltaserve/engine/adapters/lora.py), whose config
check is reused as is, so whatever passes here the engine loads; the store refuses *before*
registering, the engine's checks stay as the last line of defence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from deltaserve.adapter_store.errors import InvalidAdapterError
from deltaserve.adapter_store.paths import check_adapter_name, is_within
from deltaserve.adapter_store.safetensors_check import (
    FLOAT_DTYPES,
    INT_DTYPES,
    MAX_HEADER_BYTES,
    TensorInfo,
    check_finite,
    read_header,
)
from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.adapters.lora import read_lora_config
from deltaserve.engine.adapters.proxy import read_tokenizer_vocab
from deltaserve.engine.config import ModelConfig

logger = logging.getLogger(__name__)

KIND_FILE = "deltaserve_adapter.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
KINDS = ("lora", "sparse_delta", "proxy", "mix")
MAX_CONFIG_BYTES = 1 << 20

# Mirrors deltaserve.engine.adapters.lora._KEY (the tensor names the engine loads).
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|gate_up_proj)"
    r"\.lora_([AB])(?:\.[^.]+)?\.weight$"
)
DELTA_KEY = re.compile(
    r"^model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|gate_up_proj)"
    r"\.weight\.(indices|values)$"
)


@dataclass(frozen=True)
class BaseShapes:
    """The base model's adapter-targetable modules: input/output widths and layer count."""

    num_layers: int
    in_sizes: dict[str, int]
    out_sizes: dict[str, int]
    vocab_size: int | None = None
    """The base's vocabulary size (proxy experts must match it); None: not checked."""

    @classmethod
    def from_model_config(cls, c: ModelConfig) -> BaseShapes:
        """Same widths as the engine's CausalLM.in_sizes()/out_sizes()."""
        ins, outs = c.module_sizes()
        return cls(num_layers=c.num_hidden_layers, in_sizes=ins, out_sizes=outs,
                   vocab_size=c.vocab_size)


@dataclass(frozen=True)
class Limits:
    max_rank: int = 64
    max_header_bytes: int = MAX_HEADER_BYTES
    base_model_ids: tuple[str, ...] = ()
    """Ids the served base model answers to (the served id and the model directory's name). A
    sparse_delta's `base_model` must be one of them, compared exactly; empty: not checked."""
    base_tokenizer_sha256: str | None = None
    """tokenizer_vocab_sha256 of the base's tokenizer.json; a proxy's small models that carry a
    tokenizer must match it. None: not checked."""


@dataclass(frozen=True)
class ValidatedAdapter:
    """What validation learned: the manifest's kind/rank/targets."""

    kind: str
    rank: int | None = None
    target_modules: list[str] = field(default_factory=list)


def validate_adapter_dir(path: Path, shapes: BaseShapes | None, limits: Limits) -> ValidatedAdapter:
    """Check a staged adapter directory (files already listed/copied by paths.py).

    `shapes` None (base model config unreadable) skips the base-shape checks only.
    """
    if (path / KIND_FILE).is_file():
        cfg = _read_json(path / KIND_FILE, KIND_FILE)
        kind = cfg.get("kind")
        if kind == "lora" or (kind is None and (path / PEFT_CONFIG).is_file()):
            return validate_lora(path, shapes, limits)
        if kind not in KINDS:
            raise InvalidAdapterError(f"Unknown adapter kind {kind!r}; known: {', '.join(KINDS)}.")
        return _validate_other(path, kind, cfg, shapes, limits)
    if (path / PEFT_CONFIG).is_file():
        return validate_lora(path, shapes, limits)
    raise InvalidAdapterError(
        f"Not an adapter directory: neither {PEFT_CONFIG} nor {KIND_FILE} found.", code="no_config"
    )


def _read_json(path: Path, rel: str) -> dict:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidAdapterError(f"{rel} is larger than {MAX_CONFIG_BYTES} bytes.")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError):
        raise InvalidAdapterError(f"{rel} is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidAdapterError(f"{rel} must hold a JSON object.")
    return data


def validate_lora(path: Path, shapes: BaseShapes | None, limits: Limits) -> ValidatedAdapter:
    """PEFT LoRA: the engine's config rules, then header names/shapes/rank, then values."""
    cfg = _read_json(path / PEFT_CONFIG, PEFT_CONFIG)
    try:
        read_lora_config(str(path))  # the engine's own supported-feature checks
    except AdapterError as exc:
        raise InvalidAdapterError(f"{PEFT_CONFIG}: {exc}", code="unsupported_adapter") from None
    declared = [cfg.get("r", 8), *(cfg.get("rank_pattern") or {}).values()]
    for r in declared:
        if not isinstance(r, int) or r < 1 or r > limits.max_rank:
            raise InvalidAdapterError(
                f"LoRA rank {r!r} in {PEFT_CONFIG} is outside 1..{limits.max_rank} "
                "(--max-lora-rank).", code="rank_too_large"
            )
    weights = path / PEFT_WEIGHTS
    if not weights.is_file():
        raise InvalidAdapterError(f"{PEFT_WEIGHTS} is missing.", code="no_weights")
    tensors = read_header(weights, PEFT_WEIGHTS, limits.max_header_bytes)
    rank, modules = _check_lora_tensors(tensors, shapes, limits)
    check_finite(weights, PEFT_WEIGHTS, tensors)
    return ValidatedAdapter("lora", rank, sorted(modules))


def _check_lora_tensors(
    tensors: dict[str, TensorInfo], shapes: BaseShapes | None, limits: Limits
) -> tuple[int, set[str]]:
    pairs: dict[tuple[int, str], dict[str, TensorInfo]] = {}
    for name, info in tensors.items():
        m = LORA_KEY.match(name)
        if m is None:
            raise InvalidAdapterError(
                f"Unsupported tensor {name!r} (only q/k/v/o/gate/up/down LoRA A/B weights).",
                code="unsupported_tensor",
            )
        if info.dtype not in FLOAT_DTYPES or len(info.shape) != 2:
            raise InvalidAdapterError(f"{name}: LoRA weights must be 2-D floating point.")
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = info
    if not pairs:
        raise InvalidAdapterError("The adapter has no LoRA tensors.", code="no_weights")
    max_rank = 0
    for (layer, module), ab in sorted(pairs.items()):
        where = f"layer {layer} {module}"
        if set(ab) != {"A", "B"}:
            raise InvalidAdapterError(f"{where}: lora_A and lora_B must both be present.")
        a, b = ab["A"].shape, ab["B"].shape
        rank = a[0]
        if rank < 1 or rank > limits.max_rank:
            raise InvalidAdapterError(
                f"{where}: rank {rank} is outside 1..{limits.max_rank} (--max-lora-rank).",
                code="rank_too_large",
            )
        if b[1] != rank:
            raise InvalidAdapterError(f"{where}: A{a} and B{b} disagree on the rank.")
        if shapes is not None:
            if layer >= shapes.num_layers:
                raise InvalidAdapterError(f"{where}: the base model has {shapes.num_layers} layers.")
            if module not in shapes.in_sizes:
                raise InvalidAdapterError(f"{where}: the base model has no module {module}.",
                                          code="shape_mismatch")
            want_in, want_out = shapes.in_sizes[module], shapes.out_sizes[module]
            if a[1] != want_in or b[0] != want_out:
                raise InvalidAdapterError(
                    f"{where}: shapes A{a} B{b} do not fit the base model "
                    f"(expected A(r, {want_in}) B({want_out}, r)).", code="shape_mismatch",
                )
        max_rank = max(max_rank, rank)
    return max_rank, {module for _, module in pairs}


def _validate_other(
    path: Path, kind: str, cfg: dict, shapes: BaseShapes | None, limits: Limits
) -> ValidatedAdapter:
    """sparse_delta / proxy / mix: config paths stay inside, weights are sound safetensors."""
    if kind == "sparse_delta":
        weights = _inside(path, cfg.get("weights", "delta.safetensors"), "weights")
        tensors = read_header(weights, str(cfg.get("weights")), limits.max_header_bytes)
        _check_delta_base(cfg, limits)
        _check_delta_tensors(tensors, shapes)
        check_finite(weights, weights.name, tensors)
        _check_delta_indices(weights, tensors, shapes)
    elif kind == "proxy":
        _check_proxy(path, cfg, shapes, limits)
        for st in sorted(path.rglob("*.safetensors")):
            rel = st.relative_to(path).as_posix()
            check_finite(st, rel, read_header(st, rel, limits.max_header_bytes))
    else:
        _check_mix(cfg)
    return ValidatedAdapter(kind)


def tokenizer_vocab_sha256(model_dir: Path) -> str | None:
    """sha256 of a model directory's tokenizer vocabulary (token → id), None if it has none."""
    try:
        vocab = read_tokenizer_vocab(str(model_dir))
    except AdapterError as exc:
        raise InvalidAdapterError(str(exc)) from None
    if vocab is None:
        return None
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()


def _check_proxy(path: Path, cfg: dict, shapes: BaseShapes | None, limits: Limits) -> None:
    """Paths inside; each small model (or the expert LoRA's base, the anti-expert) has the
    base's vocabulary size and tokenizer."""
    alpha = cfg.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha != alpha \
            or abs(alpha) == float("inf"):
        raise InvalidAdapterError("proxy `alpha` must be a finite number.")
    for key in ("expert", "anti_expert"):
        d = _inside(path, cfg.get(key), key)
        if not d.is_dir():
            raise InvalidAdapterError(f"proxy `{key}` must name a directory in the adapter.")
        if key == "expert" and (d / PEFT_CONFIG).is_file():
            continue  # a LoRA on the anti-expert: the anti-expert's vocabulary is checked
        if not (d / "config.json").is_file():
            raise InvalidAdapterError(f"proxy `{key}` is not a model directory (no config.json).")
        vocab = _read_json(d / "config.json", f"{key}/config.json").get("vocab_size")
        if shapes is not None and shapes.vocab_size is not None and vocab != shapes.vocab_size:
            raise InvalidAdapterError(
                f"proxy `{key}` has vocab_size {vocab}; the base model has {shapes.vocab_size}. "
                "Proxy-tuning needs the same vocabulary.", code="vocab_mismatch",
            )
        digest = tokenizer_vocab_sha256(d)
        if limits.base_tokenizer_sha256 and digest and digest != limits.base_tokenizer_sha256:
            raise InvalidAdapterError(
                f"proxy `{key}` has a different tokenizer from the base model; proxy-tuning "
                "needs the same tokenizer.", code="tokenizer_mismatch",
            )


def _inside(root: Path, rel: object, key: str) -> Path:
    """A path from an adapter's config, which must resolve inside the adapter directory."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\x00" in rel:
        raise InvalidAdapterError(f"`{key}` must be a relative path inside the adapter.")
    target = root / rel
    if not is_within(target, root) or not target.exists():
        raise InvalidAdapterError(
            f"`{key}` ({rel!r}) does not resolve inside the adapter directory.", code="invalid_path"
        )
    return target


def _check_delta_tensors(tensors: dict[str, TensorInfo], shapes: BaseShapes | None) -> None:
    groups: dict[tuple[int, str], dict[str, TensorInfo]] = {}
    for name, info in tensors.items():
        m = DELTA_KEY.match(name)
        if m is None:
            raise InvalidAdapterError(f"Unsupported tensor {name!r} in a sparse delta.")
        layer, module, part = int(m.group(1)), m.group(2), m.group(3)
        if shapes is not None and layer >= shapes.num_layers:
            raise InvalidAdapterError(f"{name}: the base model has {shapes.num_layers} layers.")
        dtypes = INT_DTYPES if part == "indices" else FLOAT_DTYPES
        if info.dtype not in dtypes or len(info.shape) != 1:
            raise InvalidAdapterError(f"{name}: must be a 1-D {'/'.join(sorted(dtypes))} tensor.")
        groups.setdefault((layer, module), {})[part] = info
    for (layer, module), g in groups.items():
        if set(g) != {"indices", "values"} or g["indices"].shape != g["values"].shape:
            raise InvalidAdapterError(f"layer {layer} {module}: indices and values must pair up.")


def _check_delta_base(cfg: dict, limits: Limits) -> None:
    base = cfg.get("base_model")
    if limits.base_model_ids and base not in limits.base_model_ids:
        raise InvalidAdapterError(
            f"This sparse delta was made from base model {base!r}; the server serves "
            f"{limits.base_model_ids[0]!r}.", code="base_model_mismatch",
        )


def _check_delta_indices(weights: Path, tensors: dict[str, TensorInfo],
                         shapes: BaseShapes | None) -> None:
    """Flat indices in range of their base matrix (when shapes are known) and unique."""
    with safe_open(str(weights), framework="pt", device="cpu") as f:
        for name in tensors:
            m = DELTA_KEY.match(name)
            if m is None or m.group(3) != "indices":
                continue
            idx = f.get_tensor(name).long()
            module = m.group(2)
            if shapes and module not in shapes.in_sizes:
                raise InvalidAdapterError(f"{name}: the base model has no module {module}.",
                                          code="shape_mismatch")
            size = shapes.in_sizes[module] * shapes.out_sizes[module] if shapes else None
            if idx.numel() and (int(idx.min()) < 0 or (size and int(idx.max()) >= size)):
                raise InvalidAdapterError(f"{name}: indices out of range [0, {size}).",
                                          code="shape_mismatch")
            if torch.unique(idx).numel() != idx.numel():
                raise InvalidAdapterError(f"{name}: duplicate indices.")


def _check_mix(cfg: dict) -> None:
    inventory, heads, routing = cfg.get("inventory"), cfg.get("heads", 1), cfg.get("routing")
    if not isinstance(inventory, list) or not inventory:
        raise InvalidAdapterError("mix: `inventory` must be a non-empty list of adapter names.")
    for member in inventory:
        check_adapter_name(member)
    if not isinstance(heads, int) or heads < 1:
        raise InvalidAdapterError("mix: `heads` must be a positive integer.")
    if routing is not None and (
        not isinstance(routing, list)
        or len(routing) != heads
        or any(not isinstance(row, list) or len(row) != len(inventory) for row in routing)
        or any(
            not isinstance(w, int | float) or isinstance(w, bool) or w != w or abs(w) == float("inf")
            for row in routing for w in row
        )
    ):
        raise InvalidAdapterError("mix: `routing` must be heads × inventory finite numbers.")
