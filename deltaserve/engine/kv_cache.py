"""Paged KV cache: fixed-size blocks allocated once from a byte budget, handed out per sequence.

Memory held grows with the tokens actually cached (ceil(tokens / block_size) blocks per
sequence), not with max_model_len × max_num_seqs.

Automatic prefix caching (vLLM v1's design): a full block whose K/V are computed is
registered under its content hash (prefix_cache.py: chained over the token ids from the
sequence's start and a key naming the weights that computed them). Blocks are reference
counted, so sequences with the same prefix share them; a block nobody references stays cached
in the free queue until it is the least recently freed one and its slot is needed again.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from deltaserve.engine.config import ModelConfig


class NoFreeBlocksError(RuntimeError):
    """Raised if a caller allocates without checking can_allocate first (a scheduler bug)."""


class BlockAllocator:
    """CPU-only bookkeeping of KV blocks; the scheduler asks it before admitting work.

    Free blocks (reference count 0) wait in an LRU queue, oldest first; those that carry a hash
    can still be found by `lookup` and taken back (`share`) until `allocate` evicts them.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self._refs = [0] * num_blocks
        self._hash_of: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}  # block hash → block holding those K/V
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free(self) -> int:
        """Blocks that can be allocated now (cached ones that nobody references included)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks if self.num_blocks else 0.0

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, n: int) -> bool:
        return n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        """n fresh blocks, evicting the least recently freed cached ones."""
        if n > len(self._free):
            raise NoFreeBlocksError(f"asked for {n} blocks, {len(self._free)} free")
        out = []
        for _ in range(n):
            block, _ = self._free.popitem(last=False)
            self._evict(block)
            self._refs[block] = 1
            out.append(block)
        return out

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block (and clear the list). Blocks that nobody holds go
        to the free queue, the sequence's last blocks first: they are the least likely to be
        shared again, so they are evicted before its prefix."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
        blocks.clear()

    # ---- prefix caching ---------------------------------------------------------------------
    def lookup(self, hashes: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes` (block hashes, in order)."""
        found = []
        if self.enable_caching:
            for h in hashes:
                block = self._cached.get(h)
                if block is None:
                    break
                found.append(block)
        return found

    def share(self, blocks: list[int]) -> None:
        """Take a reference to cached blocks found by lookup (out of the free queue if idle)."""
        for block in blocks:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1

    def register(self, block: int, block_hash: bytes) -> None:
        """Make a full, computed block findable under its hash. When another block already
        holds the same content, that one stays the cached copy (this one is freed normally)."""
        if not self.enable_caching or self._hash_of[block] is not None:
            return
        if block_hash not in self._cached:
            self._cached[block_hash] = block
            self._hash_of[block] = block_hash

    def num_idle(self, blocks: list[int]) -> int:
        """How many of these blocks sit in the free queue (sharing them takes them out)."""
        return sum(1 for b in blocks if self._refs[b] == 0)

    def _evict(self, block: int) -> None:
        h = self._hash_of[block]
        if h is not None:
            self._hash_of[block] = None
            del self._cached[h]


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
