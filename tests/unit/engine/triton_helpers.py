"""Shared by the Triton kernel tests: the device they run on and small tile sizes."""

from __future__ import annotations

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_runnable_kernels(kernel) -> None:
    """On CPU the kernels must have been defined under the interpreter (conftest.py)."""
    if DEVICE.type == "cpu":
        kind = type(kernel).__name__
        assert kind == "InterpretedFunction", f"{kind}: TRITON_INTERPRET=1 was not set in time"

