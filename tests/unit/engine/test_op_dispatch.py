"""ops/dispatch.py: which backend runs an adapter op, and that triton stays optional."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deltaserve.engine.ops import dispatch
from deltaserve.engine.ops.dispatch import choose_backend
from deltaserve.engine.ops.lora import LoRARows, LoRAStack, lora_grouped
from deltaserve.engine.ops.sparse_delta import DeltaRows, SparseDeltaStack, sparse_delta_grouped
from tests.unit.engine import test_lora_ops as lora_t
from tests.unit.engine import test_sparse_delta_ops as delta_t

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
ROOT = Path(__file__).resolve().parents[3]


def _never() -> bool:
    raise AssertionError("triton availability must not be asked for CPU tensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_uses_triton_when_usable(dtype):
    assert choose_backend(CUDA, dtype, lambda: True) == "triton"
    assert choose_backend(CUDA, dtype, lambda: False) == "torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cpu_keeps_the_torch_path(dtype):
    assert choose_backend(CPU, dtype, _never) == "torch"


def test_unsupported_dtype_on_cuda_keeps_the_torch_path():
    assert choose_backend(CUDA, torch.float64, lambda: True) == "torch"


def test_missing_triton_means_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    dispatch.triton_usable.cache_clear()
    try:
        assert not dispatch.triton_usable()
        assert choose_backend(CUDA, torch.bfloat16) == "torch"
    finally:
        dispatch.triton_usable.cache_clear()


def _lora_case():
    adapters = lora_t._random_adapters(1, [4, 9])
    stack = LoRAStack(adapters, lora_t.OUT, lora_t.LAYERS, CPU, torch.float32)
    rows = LoRARows.build([1, -1, 0, 1], 2, CPU, torch.float32)
    (_, group), gw = next(iter(stack.groups.items()))
    _, x, y = lora_t._group_inputs(group, 4, torch.float32, seed=0)
    return x, y, gw, rows


def _delta_case():
    deltas = [delta_t._delta(1, 0.2), delta_t._delta(2, 0.2)]
    stack = SparseDeltaStack(deltas, delta_t.IN, delta_t.OUT, delta_t.LAYERS, CPU, torch.float32)
    rows = DeltaRows.build([0, -1, 1, 1], 2, CPU, torch.float32)
    (_, group), g = next(iter(stack.groups.items()))
    modules = lora_t.GROUPS[group]
    x = torch.randn(4, delta_t.IN[modules[0]])
    y = torch.randn(4, sum(delta_t.OUT[m] for m in modules))
    return x, y, g, rows


def test_cpu_apply_equals_the_torch_ops_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    for apply, op, case in [(dispatch.lora_apply, lora_grouped, _lora_case()),
                            (dispatch.sparse_delta_apply, sparse_delta_grouped, _delta_case())]:
        x, y, w, rows = case
        got, want = y.clone(), y.clone()
        apply(x, got, w, rows)
        op(x, want, w, rows)
        assert torch.equal(got, want) and not torch.equal(got, y)


def test_triton_choice_routes_to_the_kernels(monkeypatch):
    """When the selection says triton, the Triton kernels run (interpreted here) and agree."""
    pytest.importorskip("triton")
    from deltaserve.engine.ops import triton_lora, triton_sparse_delta

    calls = []
    for mod, name in [(triton_lora, "lora_grouped_triton"),
                      (triton_sparse_delta, "sparse_delta_grouped_triton")]:
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name: (calls.append(_n), _r(*a)))
    monkeypatch.setattr(dispatch, "choose_backend", lambda device, dtype: "triton")
    for apply, op, case in [(dispatch.lora_apply, lora_grouped, _lora_case()),
                            (dispatch.sparse_delta_apply, sparse_delta_grouped, _delta_case())]:
        x, y, w, rows = case
        got, want = y.clone(), y.clone()
        apply(x, got, w, rows)
        op(x, want, w, rows)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert calls == ["lora_grouped_triton", "sparse_delta_grouped_triton"]


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions) by one file."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_only_the_kernel_modules_import_triton_eagerly():
    kernel_modules = {"triton_lora.py", "triton_sparse_delta.py"}
    bad = []
    for path in sorted((ROOT / "deltaserve").rglob("*.py")):
        if path.parent.name == "ops" and path.name in kernel_modules:
            continue
        for name in _top_level_imports(path):
            if name.split(".")[0] == "triton" or any(
                    name.startswith(f"deltaserve.engine.ops.{k[:-3]}") for k in kernel_modules):
                bad.append(f"{path.relative_to(ROOT)} imports {name} at module level")
    assert not bad, "\n".join(bad)


def test_engine_imports_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import deltaserve.engine.llm_engine, deltaserve.engine.ops.dispatch as d\n"
            "assert not d.triton_usable()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
