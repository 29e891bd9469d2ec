"""system_fingerprint: stable for one checkpoint, different for different weights or dtype."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from deltaserve.entrypoints.fingerprint import system_fingerprint, weights_hash


def _model(d: Path, value: float) -> Path:
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.full((4, 4), value)}, str(d / "model.safetensors"))
    return d


def test_fingerprint_names_weights_and_dtype(tmp_path: Path) -> None:
    a, b = _model(tmp_path / "a", 1.0), _model(tmp_path / "b", 2.0)
    assert weights_hash(str(a)) == weights_hash(str(a)) != weights_hash(str(b))
    fp = system_fingerprint(str(a), "bfloat16")
    assert fp.startswith("deltaserve-") and fp.endswith(f"-{weights_hash(str(a))}-bfloat16")
    assert system_fingerprint(str(a), "float32") != fp
    assert weights_hash(str(tmp_path / "missing")) == "unknown"
