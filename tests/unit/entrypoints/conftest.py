"""Fixtures: an app over the scripted FakeEngine, driven by Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deltaserve.entrypoints.app import create_app
from deltaserve.entrypoints.settings import Settings
from tests.unit.entrypoints.fake_engine import FakeEngine


def make_lora_dir(path: Path) -> Path:
    """A small valid PEFT LoRA directory (the adapter store validates what it registers)."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{prefix}.lora_A.weight": torch.ones(4, 8), f"{prefix}.lora_B.weight": torch.ones(8, 4)}
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    make_lora_dir(root / "alpha")
    make_lora_dir(root / "beta")
    return root


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def settings(tmp_path: Path, adapter_dir: Path) -> Settings:
    return Settings(model=str(tmp_path / "tiny-base"), adapter_dir=adapter_dir, max_n=4)


@pytest.fixture
def client(settings: Settings, engine: FakeEngine) -> Iterator[TestClient]:
    app = create_app(settings, engine=engine)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
