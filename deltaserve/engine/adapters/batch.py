"""Per-step adapter metadata handed to the model: what every layer needs to add adapter deltas.

Kept apart from adapter configs and weights (LoRAX's split) so a new kind plugs in here and in
its op without touching the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltaserve.engine.ops.dispatch import lora_apply, sparse_delta_apply
from deltaserve.engine.ops.lora import LoRARows, LoRAStack
from deltaserve.engine.ops.sparse_delta import DeltaRows, SparseDeltaStack


@dataclass
class AdapterBatch:
    """The adapters of one step and which rows use them."""

    lora_stack: LoRAStack | None = None
    lora_rows: LoRARows | None = None
    delta_stack: SparseDeltaStack | None = None
    delta_rows: DeltaRows | None = None

    def apply(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add every adapter's delta for projection (layer, group) to y in place.

        x: [T, d_in] the projection's input; y: [T, d_out] its base output.
        """
        if self.lora_stack is not None:
            gw = self.lora_stack.groups.get((layer, group))
            if gw is not None:
                lora_apply(x, y, gw, self.lora_rows)
        if self.delta_stack is not None:
            g = self.delta_stack.groups.get((layer, group))
            if g is not None:
                sparse_delta_apply(x, y, g, self.delta_rows)
