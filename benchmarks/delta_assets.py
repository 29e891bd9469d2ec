"""Variant W-delta's assets: 8 sparse deltas at 10% density over the W base, built with
`deltaserve compress` (dare) from random "full fine-tunes" of it, cached next to the LoRAs:

    <assets root>/deltas/delta-NN/   deltaserve_adapter.json + delta.safetensors

Each fine-tune perturbs every projection matrix W by N(0, (0.1·std W)²) (seeded per delta);
embeddings, norms and lm_head are left alone, as `compress` requires.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.workload import Assets

NUM_DELTAS = 8
DENSITY = 0.1
DELTA_FRACTION = 4
"""One request in DELTA_FRACTION uses a delta (a quarter); the rest run on the base."""


def delta_dir(assets: Assets, i: int) -> Path:
    return assets.root / "deltas" / f"delta-{i:02d}"


def _finetune(base_dir: Path, out_dir: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    from deltaserve.adapter_store.compression import PROJ_KEY, load_state

    state = load_state(base_dir)
    g = torch.Generator().manual_seed(seed)
    for name, w in state.items():
        if PROJ_KEY.match(name):
            noise = torch.randn(w.shape, generator=g) * w.float().std() * 0.1
            state[name] = (w.float() + noise).to(w.dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"))
    for f in base_dir.iterdir():  # config, tokenizer files: the same as the base's
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out_dir / f.name)


def build_deltas(assets: Assets, n: int = NUM_DELTAS, density: float = DENSITY) -> list[Path]:
    """The n delta directories, building the missing ones (each written atomically)."""
    from deltaserve.adapter_store.compression import compress

    dirs = []
    for i in range(n):
        out = delta_dir(assets, i)
        if not (out / "deltaserve_adapter.json").is_file():
            with tempfile.TemporaryDirectory(dir=assets.root) as tmp:
                ft, staged = Path(tmp) / "ft", Path(tmp) / "delta"
                _finetune(assets.base_dir, ft, seed=1000 + i)
                compress(assets.base_dir, ft, staged, "dare", density, seed=i, progress=False)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(out, ignore_errors=True)
                staged.rename(out)
        dirs.append(out)
    return dirs


def delta_bytes(dirs: list[Path]) -> int:
    """Device bytes of the deltas: nnz · (8-byte index + 2-byte bf16 value)."""
    return sum(json.loads((d / "deltaserve_adapter.json").read_text())["kept"] * 10 for d in dirs)


def delta_plan(num_requests: int, n: int = NUM_DELTAS) -> list[int | None]:
    """Delta index of each request (every DELTA_FRACTION-th, round robin), None for base."""
    return [(i // DELTA_FRACTION) % n if i % DELTA_FRACTION == 0 else None
            for i in range(num_requests)]
