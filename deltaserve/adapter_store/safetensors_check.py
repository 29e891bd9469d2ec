"""Reading an untrusted safetensors file: the header first, within caps, then the values.

A safetensors file is `u64 little-endian N | N bytes of JSON header | data`. The header is
parsed and every entry checked (dtype, shape, offsets that tile the data region exactly) by
reading only 8 + N bytes; tensor values are read only afterwards, for the NaN/Inf check.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from deltaserve.adapter_store.errors import InvalidAdapterError

logger = logging.getLogger(__name__)

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
INT_DTYPES = frozenset({"I64", "I32"})
MAX_HEADER_BYTES = 8 << 20
"""Largest header accepted (a rank-64 LoRA on every module of an 80-layer model needs ~200 KB)."""
MAX_DIMS = 8


@dataclass(frozen=True)
class TensorInfo:
    """One header entry."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _bad(rel: str, why: str) -> InvalidAdapterError:
    return InvalidAdapterError(f"{rel}: invalid safetensors file: {why}", code="invalid_safetensors")


def read_header(path: Path, rel: str, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, TensorInfo]:
    """Parse and check the header of `path` (reads 8 + N bytes only); name → TensorInfo."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _bad(rel, "shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > max_header_bytes:
            raise _bad(rel, f"header of {n} bytes exceeds the {max_header_bytes}-byte cap")
        if 8 + n > size:
            raise _bad(rel, "truncated header")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _bad(rel, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(rel, "header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = {str(name): _entry(rel, str(name), e) for name, e in header.items()}
    _check_tiling(rel, tensors, size - 8 - n)
    return tensors


def _entry(rel: str, name: str, e: object) -> TensorInfo:
    if not isinstance(e, dict):
        raise _bad(rel, f"entry {name!r} is not an object")
    dtype, shape, offsets = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _bad(rel, f"tensor {name!r} has unsupported dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _bad(rel, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _bad(rel, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise _bad(rel, f"tensor {name!r}: {nbytes} bytes expected, offsets span {offsets}")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def _check_tiling(rel: str, tensors: dict[str, TensorInfo], data_bytes: int) -> None:
    """Tensors must tile the data region exactly: no overlap, no hole, nothing missing."""
    pos = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != pos:
            raise _bad(rel, "tensor data overlaps or leaves holes")
        pos = info.end
    if pos != data_bytes:
        raise _bad(rel, f"data region is {data_bytes} bytes, the header describes {pos} (truncated?)")


def check_finite(path: Path, rel: str, tensors: dict[str, TensorInfo]) -> None:
    """422 if any floating-point tensor holds NaN or Inf (one tensor in memory at a time)."""
    names = [n for n, t in tensors.items() if t.dtype in FLOAT_DTYPES]
    if not names:
        return
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in names:
                if not bool(torch.isfinite(f.get_tensor(name)).all()):
                    raise InvalidAdapterError(
                        f"{rel}: tensor {name!r} contains NaN or Inf.", code="non_finite_weights"
                    )
    except InvalidAdapterError:
        raise
    except Exception as exc:  # the library's own checks: corrupt data
        raise _bad(rel, str(exc)) from None
