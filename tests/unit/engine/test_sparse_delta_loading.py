"""adapters/sparse_delta.py: a delta file's parts in any order load as ascending indices (the
form the stacking relies on) with each value still at its position."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from deltaserve.engine.adapters.base import AdapterError
from deltaserve.engine.adapters.sparse_delta import KIND_FILE, load_sparse_delta
from deltaserve.engine.ops.sparse_delta import delta_dense

IN = {"q_proj": 8, "k_proj": 8, "v_proj": 8, "o_proj": 8, "gate_proj": 8, "up_proj": 8,
      "down_proj": 12}
OUT = {"q_proj": 8, "k_proj": 4, "v_proj": 4, "o_proj": 8, "gate_proj": 12, "up_proj": 12,
       "down_proj": 8}
Q = "model.layers.0.self_attn.q_proj.weight"


def _write(path, idx: torch.Tensor, val: torch.Tensor) -> str:
    path.mkdir(exist_ok=True)
    (path / KIND_FILE).write_text(json.dumps({"kind": "sparse_delta"}))
    save_file({f"{Q}.indices": idx, f"{Q}.values": val}, str(path / "delta.safetensors"))
    return str(path)


def test_shuffled_indices_load_sorted_with_their_values(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(64, generator=g)[:20].int()  # not sorted, int32 on disk
    val = torch.randn(20, generator=g)
    delta = load_sparse_delta("d", _write(tmp_path, idx, val), IN, OUT, 1)
    got_idx, got_val = delta.tensors[(0, "q_proj")]
    assert got_idx.dtype == torch.long and bool((got_idx[1:] > got_idx[:-1]).all())
    torch.testing.assert_close(delta_dense(got_idx, got_val, 8, 8), delta_dense(idx, val, 8, 8))


def test_duplicate_indices_refused_in_any_order(tmp_path) -> None:
    with pytest.raises(AdapterError, match="q_proj: duplicate indices"):
        load_sparse_delta("d", _write(tmp_path, torch.tensor([9, 2, 9]),
                                      torch.tensor([1.0, 2.0, 3.0])), IN, OUT, 1)
