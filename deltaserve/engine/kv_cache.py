"""Paged KV cache: fixed-size blocks allocated once from a byte budget, handed out per sequence.

Memory held grows with the tokens actually cached (ceil(tokens / block_size) blocks per
sequence), not with max_model_len × max_num_seqs.
"""

from __future__ import annotations

from collections import deque

import torch

from deltaserve.engine.config import ModelConfig


class NoFreeBlocksError(RuntimeError):
    """Raised if a caller allocates without checking can_allocate first (a scheduler bug)."""


class BlockAllocator:
    """CPU-only bookkeeping of free blocks; the scheduler asks it before admitting work."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks if self.num_blocks else 0.0

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise NoFreeBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        return [self._free.popleft() for _ in range(n)]

    def free(self, blocks: list[int]) -> None:
        self._free.extend(blocks)
        blocks.clear()


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * block_size * cfg.kv_size * elem


class KVCache:
    """Per layer (K, V) tensors of shape [kv_heads, num_blocks * block_size, head_dim]
    (head-major: see layers/attention.py)."""

    def __init__(
        self, cfg: ModelConfig, num_blocks: int, block_size: int, device: torch.device,
        dtype: torch.dtype,
    ):
        slots = num_blocks * block_size
        shape = (cfg.num_key_value_heads, slots, cfg.head_dim)
        self.layers = [
            (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(cfg.num_hidden_layers)
        ]
        self.nbytes = sum(k.nbytes + v.nbytes for k, v in self.layers)
