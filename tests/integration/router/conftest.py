"""A tiny Llama with an inventory of equal-rank PEFT LoRAs and registered mixes, a server over
it, and the PEFT oracle (transformers + PEFT running a materialised mix, greedily)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deltaserve.router.peft_io import MIX_INFO
from tests.integration.server.conftest import RunningServer, TinyModel, start_server
from tests.integration.server.tiny_model import build_lora, build_model_dir

MEMBERS = ("m0", "m1", "m2")
REGISTERED = {
    "mix-h2": {"inventory": ["m0", "m1", "m2"], "heads": 2,
               "routing": [[0.6, 0.3, 0.1], [0.0, 0.5, 0.5]]},
    "poly": {"inventory": ["m0", "m1"]},  # h = 1, uniform (MHR-μ)
    "mix-bad": {"inventory": ["m0", "odd"]},  # rank 8 with rank 4: refused
    "mix-gone": {"inventory": ["m0", "nope"]},  # a member that does not exist
}  # fmt: skip


def write_mix(out: Path, cfg: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "deltaserve_adapter.json").write_text(json.dumps({"kind": "mix", **cfg}))
    return out


@pytest.fixture(scope="session")
def mix_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    root = tmp_path_factory.mktemp("mix-model")
    base = build_model_dir(root / "base")
    adapters = root / "adapters"
    for i, name in enumerate(MEMBERS):
        build_lora(base, adapters / name, rank=8, seed=200 + i)
    build_lora(base, root / "spare" / "m3", rank=8, seed=210)  # replacement content
    build_lora(base, adapters / "odd", rank=4, seed=220)
    for name, cfg in REGISTERED.items():
        write_mix(adapters / name, cfg)
    return TinyModel(base, adapters)


@pytest.fixture(scope="module")
def mix_server(mix_model: TinyModel) -> Iterator[RunningServer]:
    running = start_server(mix_model, max_num_seqs=16, max_mix_members=4, max_mix_heads=4)
    yield running
    running.stop()


def materialisation(server: RunningServer, inventory: list[str], routing: list[list[float]]) -> Path:
    """The directory the server materialised for this inventory and routing."""
    mixer = server.app.state.server.mixer
    for key in mixer.built:
        info = json.loads((mixer.cache_dir / key / MIX_INFO).read_text())
        if info["inventory"] == inventory and info["routing"] == routing:
            return mixer.cache_dir / key
    raise AssertionError(f"no materialisation of {inventory} {routing} in {list(mixer.built)}")


class PeftOracle:
    """Greedy decoding with transformers (+ PEFT for an adapter directory)."""

    def __init__(self, base: Path):
        from transformers import LlamaForCausalLM

        self.base_dir = base
        self.base = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()

    def greedy(self, prompt: list[int], n: int, adapter: Path | None = None) -> list[int]:
        model = self.base
        if adapter is not None:
            import copy

            from peft import PeftModel

            model = PeftModel.from_pretrained(copy.deepcopy(self.base), str(adapter)).eval()
        ids = torch.tensor([prompt])
        out: list[int] = []
        with torch.no_grad():
            for _ in range(n):
                nxt = int(model(ids).logits[0, -1].argmax())
                out.append(nxt)
                if nxt == 1:  # EOS
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        return out


@pytest.fixture(scope="session")
def oracle(mix_model: TinyModel) -> PeftOracle:
    return PeftOracle(mix_model.base)


def copy_adapter(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest
