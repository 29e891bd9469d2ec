"""`system_fingerprint`: one string naming the backend configuration that produced a response.

`deltaserve-<version>-<weights>-<dtype>`: <weights> is 12 hex digits of a sha256 over the base
model's config.json and, per safetensors file, its name, size, header (tensor names, shapes,
dtypes, offsets) and first and last MiB of data — enough to tell checkpoints apart without
reading many gigabytes at start-up.
"""

from __future__ import annotations

import hashlib
import os
import struct
from importlib import metadata

_EDGE = 1 << 20


def _version() -> str:
    try:
        return metadata.version("deltaserve")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def weights_hash(model_dir: str) -> str:
    """12 hex digits identifying the checkpoint in `model_dir` ('unknown' without one)."""
    h = hashlib.sha256()
    try:
        names = sorted(n for n in os.listdir(model_dir) if n.endswith(".safetensors"))
    except OSError:
        return "unknown"
    for name in ["config.json", *names]:
        path = os.path.join(model_dir, name)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                h.update(f"{name}\0{size}\0".encode())
                if name == "config.json":
                    h.update(f.read())
                    continue
                (header_len,) = struct.unpack("<Q", f.read(8))
                h.update(f.read(min(header_len, 100 << 20)))
                h.update(f.read(_EDGE))
                f.seek(max(0, size - _EDGE))
                h.update(f.read(_EDGE))
        except (OSError, struct.error):
            continue
    return h.hexdigest()[:12]


def system_fingerprint(model_dir: str, dtype: str) -> str:
    return f"deltaserve-{_version()}-{weights_hash(model_dir)}-{dtype}"
