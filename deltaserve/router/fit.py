"""MHR-z: fitting only the routing of a mix on a few prompt/completion examples.

The inventory stays frozen; the trainable parameters are the routing logits z [h, J]. Each
step materialises the mix differentiably (materialise.py) from w = MHR-z(z) — sigmoid,
normalised over the inventory per head — and applies it to a transformers causal LM through
forward hooks on the adapted linears (`y += scale · (x Aᵀ) Bᵀ`), so autograd reaches z only.
The loss is the mean cross-entropy of the completion tokens given their prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from deltaserve.router.materialise import LoRAPair, ModuleKey, materialise, mhr_z_weights
from deltaserve.router.mix import MixMemberError
from deltaserve.router.peft_io import PeftLoRA, check_compatible

Example = tuple[list[int], list[int]]
"""(prompt token ids, completion token ids)."""


def read_examples(path: Path) -> list[dict[str, str]]:
    """JSON lines, each {"prompt": str, "completion": str}."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
                raise ValueError(f"{path}:{n}: each line needs string `prompt` and `completion`")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


def encode(tokenizer: Any, rows: list[dict[str, str]]) -> list[Example]:
    """Token ids of each example (the tokenizer's special tokens on the prompt only)."""
    return [
        (tokenizer(r["prompt"])["input_ids"],
         tokenizer(r["completion"], add_special_tokens=False)["input_ids"])
        for r in rows
    ]  # fmt: skip


def lora_scale(config: dict[str, Any]) -> float:
    """PEFT's scaling for the members' shared config (no per-module patterns)."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise MixMemberError("mix fit does not support rank/alpha patterns")
    rank, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


class RoutedLoRA:
    """A frozen inventory applied to `model` with routing weights set per forward."""

    def __init__(self, model: torch.nn.Module, members: list[PeftLoRA], labels: list[str]):
        check_compatible(members, labels)
        self.model = model
        self.members = [m.tensors for m in members]
        self.scale = lora_scale(members[0].config)
        self.mixed: dict[ModuleKey, LoRAPair] = {}
        layers = model.model.layers  # type: ignore[union-attr]
        for layer, module in self.members[0]:
            block = layers[layer].self_attn if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) \
                else layers[layer].mlp  # fmt: skip
            getattr(block, module).register_forward_hook(self._hook((layer, module)))

    def _hook(self, key: ModuleKey) -> Callable[..., torch.Tensor | None]:
        def add_delta(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor):
            if key not in self.mixed:
                return None
            a, b = self.mixed[key]  # A [r, d_in], B [d_out, r]
            return out + self.scale * F.linear(F.linear(inputs[0], a), b)

        return add_delta

    @contextmanager
    def routed(self, weights: torch.Tensor | None) -> Iterator[None]:
        """Forwards inside use the mix under `weights` [h, J] (None: the base model)."""
        self.mixed = {} if weights is None else materialise(self.members, weights)
        try:
            yield
        finally:
            self.mixed = {}

    def loss(self, examples: list[Example]) -> torch.Tensor:
        """Mean cross-entropy over all completion tokens of `examples`."""
        total, count = torch.zeros(()), 0
        for prompt, completion in examples:
            ids = torch.tensor([prompt + completion])
            logits = self.model(ids).logits[0, len(prompt) - 1 : -1]  # predicts the completion
            total = total + F.cross_entropy(logits, ids[0, len(prompt):], reduction="sum")
            count += len(completion)
        return total / max(count, 1)

    def eval_loss(self, examples: list[Example], weights: torch.Tensor | None) -> float:
        with torch.no_grad(), self.routed(weights):
            return float(self.loss(examples))


@dataclass
class FitResult:
    logits: torch.Tensor
    """[h, J] learned routing logits."""
    weights: torch.Tensor
    """[h, J] MHR-z weights (rows sum to 1): the mix's routing."""
    losses: list[float] = field(default_factory=list)
    """Training loss before each step, then the final one."""


def fit_routing(
    routed: RoutedLoRA, examples: list[Example], heads: int, steps: int, lr: float = 0.1,
    progress: Callable[[Iterator[int]], Iterator[int]] | None = None,
) -> FitResult:  # fmt: skip
    """Adam on the logits z [h, J] from z = 0 (the uniform mix, MHR-μ)."""
    for p in routed.model.parameters():
        p.requires_grad_(False)
    logits = torch.zeros(heads, len(routed.members), requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    losses = []
    steps_iter: Iterator[int] = iter(range(steps))
    bar = progress(steps_iter) if progress is not None else steps_iter
    for _ in bar:
        with routed.routed(mhr_z_weights(logits)):
            loss = routed.loss(examples)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    weights = mhr_z_weights(logits.detach())
    losses.append(routed.eval_loss(examples, weights))
    return FitResult(logits.detach(), weights, losses)


def write_mix(out: Path, inventory: list[str], result: FitResult, meta: dict[str, Any]) -> Path:
    """A registrable `mix` adapter directory with the fitted routing."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "kind": "mix",
        "inventory": inventory,
        "heads": int(result.weights.shape[0]),
        "routing": [[round(float(w), 6) for w in row] for row in result.weights],
        "fit": {"method": "MHR-z", "logits": result.logits.tolist(),
                "loss_before": result.losses[0], "loss_after": result.losses[-1], **meta},
    }  # fmt: skip
    (out / "deltaserve_adapter.json").write_text(json.dumps(cfg, indent=2))
    return out
