"""proxy adapters (proxy-tuning): a small expert / anti-expert pair steering the base's logits.

Directory: `deltaserve_adapter.json` {"kind": "proxy", "expert": "expert", "anti_expert":
"anti", "alpha": 1.0}; each path an HF model directory inside the adapter, or (expert only) a
PEFT LoRA directory whose base is the anti-expert.

Small models are loaded once per distinct model (a hash of config.json and the safetensors
files, so copies of one anti-expert in several adapter directories share one instance) and
shared by every proxy adapter naming it: the registry keeps weak references, so a small model lives exactly as long
as some loaded proxy adapter holds it (Python's refcount is the refcount). Each small model has
its own paged KV cache and block allocator, sized from the engine's proxy memory budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field

import torch

from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.adapters.lora import LoRAAdapter, load_lora
from deltaserve.engine.config import ModelConfig
from deltaserve.engine.kv_cache import BlockAllocator, KVCache, kv_bytes_per_block
from deltaserve.engine.models.decoder import CausalLM
from deltaserve.engine.models.loader import load_model

logger = logging.getLogger(__name__)

KIND_FILE = "deltaserve_adapter.json"


@dataclass(eq=False)
class SmallModel:
    """One loaded small model: weights, its paged KV cache and per-(sequence, role) tables."""

    path: str
    cfg: ModelConfig
    model: CausalLM
    kv: KVCache
    blocks: BlockAllocator
    nbytes: int
    """Weights + KV cache bytes (counted against the proxy memory budget)."""
    tables: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    """(seq_id, role) → block table; role 'anti' or 'expert'."""


@dataclass(eq=False)
class ProxyAdapter:
    """A loaded proxy adapter. Holds its small models (keeping them alive)."""

    name: str
    anti: SmallModel
    expert: SmallModel
    """The expert's weights: the anti-expert itself when the expert is a LoRA on it."""
    expert_lora: LoRAAdapter | None
    """Device-resident LoRA applied to `expert` for the expert role (None: a full model)."""
    alpha: float
    lora_key: str = ""

    # The pool API: small models live outside the adapter pool (their own budget).
    nbytes: int = 0

    def device_nbytes(self, elem: int) -> int:
        return 0

    def to(self, device: torch.device, dtype: torch.dtype) -> ProxyAdapter:
        return self

    def streams(self) -> list[tuple[SmallModel, str]]:
        """(small model, role) pairs whose KV one sequence of this adapter needs."""
        return [(self.anti, "anti"), (self.expert, "expert")]


class SmallModels:
    """Loads small models once per real path; budgets weights + KV in bytes."""

    def __init__(self, base: ModelConfig, base_vocab: dict[str, int] | None, budget_bytes: int,
                 kv_blocks: int, block_size: int, max_model_len: int, device: torch.device,
                 dtype: torch.dtype):
        self.base, self.base_vocab = base, base_vocab
        self.budget_bytes, self.kv_blocks, self.block_size = budget_bytes, kv_blocks, block_size
        self.max_model_len, self.device, self.dtype = max_model_len, device, dtype
        self._lock = threading.Lock()
        self._models: weakref.WeakValueDictionary[str, SmallModel] = weakref.WeakValueDictionary()

    @property
    def used_bytes(self) -> int:
        return sum(m.nbytes for m in list(self._models.values()))

    def live(self) -> list[SmallModel]:
        return list(self._models.values())

    def get(self, path: str) -> SmallModel:
        real = os.path.realpath(path)
        key = content_key(real)
        with self._lock:
            sm = self._models.get(key)
            if sm is None:
                sm = self._load(real)
                self._models[key] = sm
            return sm

    def _load(self, path: str) -> SmallModel:
        try:
            cfg = ModelConfig.from_dir(path)
        except ValueError as e:
            raise AdapterError(f"proxy small model: {e}") from None
        check_vocab(path, cfg, self.base, self.base_vocab)
        elem = torch.tensor([], dtype=self.dtype).element_size()
        weights = _param_count(cfg) * elem
        per_block = kv_bytes_per_block(cfg, self.block_size, self.dtype)
        # Two roles (anti + expert-LoRA) may share one small model's cache. A model takes at
        # most half of what is left, so later small models still fit.
        need = 2 * (-(-self.max_model_len // self.block_size) + 1)
        room = self.budget_bytes - self.used_bytes - weights
        num_blocks = min(self.kv_blocks, room // 2 // per_block) if room > 0 else 0
        if num_blocks < need:
            raise AdapterError(
                f"proxy small model {os.path.basename(path)!r} needs {weights + need * per_block} "
                f"bytes (weights + KV for one sequence); {max(room + weights, 0)} bytes of the "
                f"proxy memory budget ({self.budget_bytes}) are left. Raise proxy_memory_bytes."
            )
        try:
            model = load_model(path, cfg, self.max_model_len, self.device, self.dtype)
        except ValueError as e:
            raise AdapterError(f"proxy small model: {e}") from None
        kv = KVCache(cfg, num_blocks, self.block_size, self.device, self.dtype)
        logger.info("proxy small model %s: %d KV blocks, %d bytes", path, num_blocks,
                    weights + kv.nbytes)
        return SmallModel(path, cfg, model, kv, BlockAllocator(num_blocks, self.block_size),
                          weights + kv.nbytes)


def content_key(path: str) -> str:
    """sha256 of config.json and the safetensors files (names and bytes) of a model dir."""
    h = hashlib.sha256()
    names = ["config.json"] + sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    for name in names:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        h.update(name.encode() + b"\0")
        with open(full, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _param_count(c: ModelConfig) -> int:
    h, i, q, kv = c.hidden_size, c.intermediate_size, c.q_size, c.kv_size
    # Mixtral: every expert is an MLP, plus the router; Gemma's two extra norms are noise.
    ffn = (c.num_experts * 3 * h * i + c.num_experts * h) if c.num_experts else 3 * h * i
    layer = h * (q + 2 * kv) + q * h + ffn + 2 * h
    head = 0 if c.tie_word_embeddings else c.vocab_size * h
    return c.vocab_size * h + head + c.num_hidden_layers * layer + h


def check_vocab(path: str, cfg: ModelConfig, base: ModelConfig,
                base_vocab: dict[str, int] | None) -> None:
    """Refuse a small model whose vocabulary or tokenizer differs from the base's."""
    name = os.path.basename(path)
    if cfg.vocab_size != base.vocab_size:
        raise AdapterError(
            f"proxy small model {name!r} has vocab_size {cfg.vocab_size}; the base model has "
            f"{base.vocab_size}. Proxy-tuning needs the same vocabulary."
        )
    vocab = read_tokenizer_vocab(path)
    if vocab is not None and base_vocab is not None and vocab != base_vocab:
        raise AdapterError(
            f"proxy small model {name!r} has a different tokenizer from the base model; "
            "proxy-tuning needs the same tokenizer."
        )


def read_tokenizer_vocab(path: str) -> dict[str, int] | None:
    """token → id from tokenizer.json (model vocab + added tokens); None if there is none."""
    tj = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tj):
        return None
    try:
        with open(tj) as f:
            data = json.load(f)
        vocab = dict(data.get("model", {}).get("vocab") or {})
        for t in data.get("added_tokens") or []:
            vocab[t["content"]] = t["id"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise AdapterError(f"cannot read {tj!r}: {e}") from None
    return vocab


def read_proxy_config(path: str) -> dict:
    try:
        with open(os.path.join(path, KIND_FILE)) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"cannot read {KIND_FILE}: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("kind") != "proxy":
        raise AdapterError(f"{KIND_FILE} must hold an object with kind 'proxy'")
    alpha = cfg.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha != alpha \
            or abs(alpha) == float("inf"):
        raise AdapterError("proxy `alpha` must be a finite number")
    return cfg


def _inside(root: str, rel: object, key: str) -> str:
    real = os.path.realpath(root)
    if not isinstance(rel, str) or not rel:
        raise AdapterError(f"proxy `{key}` must be a relative path inside the adapter")
    full = os.path.realpath(os.path.join(real, rel))
    if os.path.commonpath([real, full]) != real or not os.path.isdir(full):
        raise AdapterError(f"proxy `{key}` ({rel!r}) must name a directory inside the adapter")
    return full


def load_proxy(name: str, path: str, models: SmallModels, max_rank: int) -> ProxyAdapter:
    """Load (or share) the small models of a proxy adapter and check them against the base."""
    cfg = read_proxy_config(path)
    anti = models.get(_inside(path, cfg.get("anti_expert"), "anti_expert"))
    expert_dir = _inside(path, cfg.get("expert"), "expert")
    if os.path.isfile(os.path.join(expert_dir, "adapter_config.json")):
        m = anti.model
        lora = load_lora(f"{name}/expert", expert_dir, m.in_sizes(), m.out_sizes(),
                         anti.cfg.num_hidden_layers, max_rank)
        return ProxyAdapter(name, anti, anti, lora.to(models.device, models.dtype),
                            float(cfg.get("alpha", 1.0)), lora_key=f"{name}/expert")
    return ProxyAdapter(name, anti, models.get(expert_dir), None, float(cfg.get("alpha", 1.0)))
