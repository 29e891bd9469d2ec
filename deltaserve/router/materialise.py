"""MHR / Polytropon materialisation: an inventory of LoRAs + routing weights → one LoRA.

With h heads, head k owns columns [k·d_in/h, (k+1)·d_in/h) of every A (r × d_in) and rows
[k·d_out/h, (k+1)·d_out/h) of every B (d_out × r)::

    A_k = Σ_j w[k, j] A_{j,k}        B_k = Σ_j w[k, j] B_{j,k}

and the heads are concatenated back, so the result is an ordinary rank-r LoRA (every head
keeps the full rank) that the engine serves like any other. h = 1 is Polytropon; uniform
w = 1/J is MHR-μ. Pure torch and differentiable in `routing` (mix fit trains through it).
"""

from __future__ import annotations

import torch

ModuleKey = tuple[int, str]
"""(layer index, module name), e.g. (0, "q_proj")."""
LoRAPair = tuple[torch.Tensor, torch.Tensor]
"""(A [r, d_in], B [d_out, r]) as stored by PEFT (unscaled)."""


class MixShapeError(ValueError):
    """The members cannot be mixed with this many heads (shapes disagree or do not divide)."""


def mix_pair(a: torch.Tensor, b: torch.Tensor, routing: torch.Tensor) -> LoRAPair:
    """Mix one module of the inventory.

    a: [J, r, d_in] stacked members' A; b: [J, d_out, r] stacked B; routing: [h, J].
    Returns A [r, d_in] and B [d_out, r] (dtype of `routing` promotion with the weights).
    """
    n_members, rank, d_in = a.shape
    d_out = b.shape[1]
    heads = routing.shape[0]
    if d_in % heads or d_out % heads:
        raise MixShapeError(
            f"d_in={d_in} and d_out={d_out} must both be divisible by heads={heads}"
        )
    w = routing.to(a.dtype)
    # A: [J, r, h, d_in/h] → per head k: Σ_j w[k, j] A[j, :, k, :]
    a_heads = a.reshape(n_members, rank, heads, d_in // heads)
    mixed_a = torch.einsum("kj,jrkc->rkc", w, a_heads).reshape(rank, d_in)
    # B: [J, h, d_out/h, r] → per head k: Σ_j w[k, j] B[j, k, :, :]
    b_heads = b.reshape(n_members, heads, d_out // heads, rank)
    mixed_b = torch.einsum("kj,jkor->kor", w, b_heads).reshape(d_out, rank)
    return mixed_a, mixed_b


def check_same_layout(members: list[dict[ModuleKey, LoRAPair]]) -> None:
    """All members adapt the same modules with the same shapes (rank included)."""
    first = members[0]
    for j, member in enumerate(members[1:], start=1):
        if set(member) != set(first):
            raise MixShapeError(f"member {j} adapts different modules than member 0")
        for key, (a, b) in member.items():
            if a.shape != first[key][0].shape or b.shape != first[key][1].shape:
                raise MixShapeError(
                    f"member {j} layer {key[0]} {key[1]}: shapes A{tuple(a.shape)} "
                    f"B{tuple(b.shape)} differ from member 0's"
                )


def materialise(
    members: list[dict[ModuleKey, LoRAPair]], routing: torch.Tensor
) -> dict[ModuleKey, LoRAPair]:
    """The mixed LoRA of `members` (J of them) under `routing` [h, J], module by module."""
    if routing.dim() != 2 or routing.shape[1] != len(members):
        raise MixShapeError(f"routing must be [heads, {len(members)}], got {tuple(routing.shape)}")
    check_same_layout(members)
    out: dict[ModuleKey, LoRAPair] = {}
    for key in sorted(members[0]):
        a = torch.stack([m[key][0] for m in members])
        b = torch.stack([m[key][1] for m in members])
        out[key] = mix_pair(a, b, routing)
    return out


def mhr_z_weights(logits: torch.Tensor) -> torch.Tensor:
    """MHR-z routing: sigmoid of the logits [h, J], normalised over the inventory per head."""
    s = torch.sigmoid(logits)
    return s / s.sum(dim=-1, keepdim=True)
