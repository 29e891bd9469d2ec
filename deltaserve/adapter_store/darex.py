"""Choosing DAREx-q's rescale 1/q (density < q ≤ 1) on a small unlabelled calibration batch.

- Global (default): try a log-spaced grid of q in (density, 1]; for each, the model
  `W_base + mask ⊙ Δ / q` runs the calibration texts and we measure the mean absolute change of
  the logits at the unpruned fine-tune's top-k tokens (per position). The q with the smallest
  change wins.
- Per layer (`per_layer_q`): analytic, one forward only. With X the calibration inputs of a
  projection (captured from the unpruned fine-tune), M = mask ⊙ Δ and s = 1/q, the layer's
  output error ‖s·X Mᵀ − X Δᵀ‖² summed over the layer's seven projections is minimised by
  s* = Σ⟨X Mᵀ, X Δᵀ⟩ / Σ‖X Mᵀ‖² (least squares). Dropping entries adds noise to ‖X Mᵀ‖², so
  s* < 1/density, i.e. q* > density — DARE's 1/density over-amplifies exactly that noise.
  q* is clamped into (density, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from deltaserve.adapter_store.delta_keys import layer_of

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the barn.",
    "In 1969, astronauts landed on the Moon and walked on its dusty grey surface for hours.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Water boils at one hundred degrees Celsius at sea level, and freezes at zero.",
    "She opened the letter, read it twice, and then put it back in the drawer without a word.",
    "To make bread, mix flour, water, salt and yeast, knead the dough and let it rise.",
    "Question: what is 12 plus 7? Answer: 19. Question: what is 3 times 4? Answer: 12.",
    "The committee will meet on Tuesday to discuss the budget for the next fiscal year.",
]
MAX_TOKENS = 64
TOP_K = 10
GRID = 16


def read_calibration(path: Path | None) -> list[str]:
    """Calibration texts: one per non-empty line of `path`, else the built-in default."""
    if path is None:
        return list(DEFAULT_CALIBRATION)
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"calibration file {path} has no text")
    return texts[:32]


def q_grid(density: float, n: int = GRID) -> list[float]:
    """n log-spaced values in (density, 1], ending at 1."""
    return [density ** (1 - i / n) for i in range(1, n + 1)]


def _load(base_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(base_dir))


def _encode(tok, texts: list[str]) -> list[torch.Tensor]:
    out = []
    for t in texts:
        ids = tok(t, add_special_tokens=True)["input_ids"][:MAX_TOKENS]
        if len(ids) >= 2:
            out.append(torch.tensor([ids]))  # [1, L]
    if not out:
        raise ValueError("calibration texts tokenize to nothing")
    return out


@contextmanager
def _weights(model, base: dict[str, torch.Tensor], upd: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set W = base + upd[P] for every P in upd (in place)."""
    params = {n: model.get_parameter(n) for n in upd}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(base[n].float() + upd[n])
        try:
            yield
        finally:
            for n, p in params.items():
                p.copy_(base[n].float())


@torch.no_grad()
def _logits(model, batch: list[torch.Tensor]) -> list[torch.Tensor]:
    return [model(input_ids=ids).logits[0].float() for ids in batch]  # each [L, vocab]


def topk_change(ref: list[torch.Tensor], got: list[torch.Tensor], k: int = TOP_K) -> float:
    """Mean |got − ref| at ref's top-k tokens, over all positions."""
    total, count = 0.0, 0
    for r, g in zip(ref, got, strict=True):
        idx = r.topk(min(k, r.shape[-1]), dim=-1).indices  # [L, k]
        total += (g.gather(-1, idx) - r.gather(-1, idx)).abs().sum().item()
        count += idx.numel()
    return total / max(count, 1)


def choose_global_q(base_dir: Path, base: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor],
                    masks: dict[str, torch.Tensor], density: float, texts: list[str],
                    progress: bool) -> float:
    """The q of the grid whose pruned model changes the fine-tune's top-k logits least."""
    model, tok = _load(base_dir)
    batch = _encode(tok, texts)
    with _weights(model, base, deltas):
        ref = _logits(model, batch)
    pruned = {n: d * masks[n] for n, d in deltas.items()}
    best_q, best = 1.0, math.inf
    for q in tqdm(q_grid(density), desc="darex-q", disable=not progress, unit="q"):
        with _weights(model, base, {n: m / q for n, m in pruned.items()}):
            change = topk_change(ref, _logits(model, batch))
        logger.debug("q=%.4f top-%d logit change %.5f", q, TOP_K, change)
        if change < best:
            best_q, best = q, change
    return best_q


def choose_per_layer_q(base_dir: Path, base: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor],
                       masks: dict[str, torch.Tensor], density: float, texts: list[str],
                       num_layers: int) -> list[float]:
    """One q per decoder layer, least-squares fit of the layer's projection outputs."""
    model, tok = _load(base_dir)
    batch = _encode(tok, texts)
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in deltas}
    hooks = []
    for n in deltas:
        module = model.get_submodule(n.removesuffix(".weight"))
        hooks.append(module.register_forward_hook(
            lambda _m, args, _out, n=n: inputs[n].append(args[0].reshape(-1, args[0].shape[-1]))))
    try:
        with _weights(model, base, deltas):
            _logits(model, batch)
    finally:
        for h in hooks:
            h.remove()
    num, den = [0.0] * num_layers, [0.0] * num_layers
    for n, d in deltas.items():
        x = torch.cat(inputs[n])  # [N, d_in]
        full, kept = x @ d.t(), x @ (d * masks[n]).t()  # [N, d_out]
        num[layer_of(n)] += (kept * full).sum().item()
        den[layer_of(n)] += (kept * kept).sum().item()
    out = []
    for a, b in zip(num, den, strict=True):
        q = b / a if a > 0 and b > 0 else 1.0  # q = 1/s* = den/num
        out.append(min(1.0, max(q, math.nextafter(density, 2.0))))
    return out
