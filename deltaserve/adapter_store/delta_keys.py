"""Which parameters a sparse delta covers: the decoder projections, by checkpoint name."""

from __future__ import annotations

import re

PROJ_KEY = re.compile(
    r"^model\.layers\.(\d+)\.(?:self_attn|mlp)\."
    r"(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv_proj|gate_up_proj)"
    r"\.weight$"
)
"""`model.layers.<i>.<self_attn|mlp>.<projection>.weight` (fused Phi-3 names included)."""


def layer_of(name: str) -> int:
    """The decoder layer index of a projection's parameter name (PROJ_KEY must match it)."""
    m = PROJ_KEY.match(name)
    assert m is not None, name
    return int(m.group(1))
