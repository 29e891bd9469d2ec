"""Content hashes of KV blocks, for automatic prefix caching (see kv_cache.BlockAllocator).

A full block's hash chains over its parent's: h_i = H(h_{i-1}, token ids of block i), with
h_{-1} = the sequence's *root*. Equal hashes therefore mean the same tokens from position 0
under the same root, and the root names everything else the K/V depend on:
- the base model (an identity of its weights, `base_identity`);
- for an adapter row, the adapter's kind and content identity (the store's content sha256, or
  a mix's hash over its members' contents, weights and routing) — never its name, so a
  re-uploaded adapter under an old name cannot meet its predecessor's K/V — and the tenant,
  so one tenant's adapter K/V are never reused for another tenant's request;
- with the `tenant` scope, the tenant for base rows too (by default base rows of all tenants
  share: the base's K/V of a prompt are the same whoever sends it).
Rows that cannot be keyed safely get no root and are not cached: adapters without a content
identity, and proxy-tuning rows (their small models' caches would have to hit in step with the
base's; see README, "Prefix caching").
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array

from deltaserve.engine.request import Sequence

SCOPES = ("global", "tenant")
_DIGEST = 16  # bytes of blake2b: collisions are out of reach, and a hit needs one


def base_identity(model_dir: str) -> str:
    """An identity of the base weights: config.json and every safetensors header, which name
    each tensor with its dtype, shape and byte offsets (cheap: no weights are read)."""
    h = hashlib.blake2b(digest_size=_DIGEST)
    names = sorted(os.listdir(model_dir))
    for name in names:
        path = os.path.join(model_dir, name)
        if name == "config.json":
            with open(path, "rb") as f:
                h.update(f.read())
        elif name.endswith(".safetensors"):
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                h.update(name.encode() + f.read(min(n, 1 << 26)))
    return h.hexdigest()


def root_key(base_id: str, kind: str | None, adapter_uid: str | None, tenant: str | None,
             scope: str) -> bytes | None:
    """The root of a request's block hashes, or None when its rows must not be cached.

    kind/adapter_uid: None for base rows; adapter_uid "" when the adapter has no content
    identity (not cacheable)."""
    if kind == "proxy" or adapter_uid == "":
        return None
    owner = tenant if (kind is not None or scope == "tenant") else None
    text = json.dumps([base_id, kind, adapter_uid, owner])
    return hashlib.blake2b(text.encode(), digest_size=_DIGEST).digest()


def extend_hashes(seq: Sequence, num_tokens: int, block_size: int) -> list[bytes]:
    """seq.block_hashes grown to cover every full block of its first num_tokens tokens."""
    hashes = seq.block_hashes
    full = num_tokens // block_size
    if len(hashes) < full:
        parent = hashes[-1] if hashes else seq.request.cache_root
        start = len(hashes) * block_size
        tokens = seq.token_slice(start, full * block_size)
        for i in range(0, len(tokens), block_size):
            h = hashlib.blake2b(parent, digest_size=_DIGEST)
            h.update(array("q", tokens[i:i + block_size]).tobytes())
            parent = h.digest()
            hashes.append(parent)
    return hashes[:full]
