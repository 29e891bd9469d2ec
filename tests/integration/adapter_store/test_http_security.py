"""Over HTTP against the real engine: tenant isolation probes (official openai client and
httpx) and a corpus of malicious uploads, each refused with its status while serving goes on."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.integration.adapter_store.conftest import (
    RunningServer,
    TinyModel,
    auth,
    multipart_files,
    start_server,
    write_keys,
)


@pytest.fixture(scope="module")
def env(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("security")
    root = tmp / "sources"
    root.mkdir()
    server = start_server(
        tiny_model, api_keys=write_keys(tmp / "keys.json"), adapter_source_root=[root],
        data_dir=tmp / "data", max_adapter_bytes=200_000, max_lora_rank=8,
    )  # fmt: skip
    yield server, root, tmp
    server.stop()


def client(server: RunningServer, who: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=f"key-{who}", max_retries=0)


def test_tenant_isolation_probes(env, tiny_model: TinyModel) -> None:
    server, _, _ = env
    r = httpx.post(f"{server.base_url}/v1/adapters", data={"name": "secret"}, headers=auth("acme"),
                   files=multipart_files(tiny_model.adapters / "alpha"))  # fmt: skip
    assert r.status_code == 201 and r.json()["owner"] == "acme"
    acme, beta = client(server, "acme"), client(server, "beta")
    assert "secret" in {m.id for m in acme.models.list()}
    # gamma (rank 16) exceeds --max-lora-rank 8: refused at start-up, never registered
    assert {m.id for m in beta.models.list()} == {"tiny", "alpha", "beta"}
    out = acme.completions.create(model="secret", prompt="Hi", max_tokens=3, temperature=0)
    assert out.choices[0].text
    with pytest.raises(openai.NotFoundError):
        beta.completions.create(model="secret", prompt="Hi", max_tokens=3)
    with pytest.raises(openai.NotFoundError):
        beta.chat.completions.create(model="secret", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        client(server, "nobody").models.list()
    base = server.base_url
    probes = [("GET", "/v1/adapters/secret"), ("DELETE", "/v1/adapters/secret")]
    for method, path in probes:
        assert httpx.request(method, base + path, headers=auth("beta")).status_code == 404
    unload = httpx.post(f"{base}/v1/unload_lora_adapter", json={"lora_name": "secret"},
                        headers=auth("beta"))  # fmt: skip
    assert unload.status_code == 404
    assert httpx.delete(f"{base}/v1/adapters/alpha", headers=auth("beta")).status_code == 403
    same_name = httpx.post(f"{base}/v1/adapters", data={"name": "secret"}, headers=auth("beta"),
                           files=multipart_files(tiny_model.adapters / "beta"))  # fmt: skip
    assert same_name.status_code == 201  # beta's own namespace: no conflict, no leak
    acme_sha = httpx.get(f"{base}/v1/adapters/secret", headers=auth("acme")).json()["sha256"]
    assert acme_sha == r.json()["sha256"]


# ---- the malicious-upload corpus ----------------------------------------------------------

def _weights(d: Path) -> Path:
    return d / "adapter_model.safetensors"


def _mutate_tensor(fn: Callable[[dict], dict]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        save_file(fn(load_file(str(_weights(d)))), str(_weights(d)))

    return apply


def _first_a(t: dict) -> str:
    return sorted(k for k in t if "lora_A" in k)[0]


def _nan(t: dict) -> dict:
    t[_first_a(t)][0, 0] = float("nan")
    return t


def _wrong_shape(t: dict) -> dict:
    k = _first_a(t)
    t[k] = torch.zeros(t[k].shape[0], t[k].shape[1] + 1)
    return t


def _pickle(d: Path) -> None:
    _weights(d).unlink()
    (d / "adapter_model.bin").write_bytes(pickle.dumps({"w": [1.0]}))


def _truncate(d: Path) -> None:
    _weights(d).write_bytes(_weights(d).read_bytes()[:-64])


def _header_bomb(d: Path) -> None:
    _weights(d).write_bytes(struct.pack("<Q", 1 << 62) + b"{}")


def _rank(d: Path) -> None:
    cfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**cfg, "r": 16}))


def _oversized(d: Path) -> None:
    (d / "padding.json").write_bytes(b" " * 300_000)


UPLOADS: dict[str, tuple[Callable[[Path], None] | None, str, int]] = {
    "pickle": (_pickle, "p1", 422),
    "nan": (_mutate_tensor(_nan), "n1", 422),
    "wrong_shape": (_mutate_tensor(_wrong_shape), "w1", 422),
    "truncated": (_truncate, "t1", 422),
    "header_bomb": (_header_bomb, "h1", 422),
    "rank_over_limit": (_rank, "r1", 422),
    "oversized": (_oversized, "o1", 413),
    "traversal_name": (None, "..", 422),
    "traversal_name_2": (None, "../../etc", 422),
}


def _serving(server: RunningServer) -> None:
    r = httpx.post(f"{server.base_url}/v1/completions", headers=auth("acme"), timeout=60,
                   json={"model": "alpha", "prompt": "Hi", "max_tokens": 2})  # fmt: skip
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", sorted(UPLOADS))
def test_malicious_uploads(env, tiny_model: TinyModel, case: str) -> None:
    server, _, tmp = env
    mutate, name, want = UPLOADS[case]
    d = tmp / f"upload-{case}"
    shutil.copytree(tiny_model.adapters / "beta", d)
    if mutate is not None:
        mutate(d)
    r = httpx.post(f"{server.base_url}/v1/adapters", data={"name": name}, headers=auth("acme"),
                   files=multipart_files(d), timeout=60)  # fmt: skip
    assert r.status_code == want, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert name not in [a["id"] for a in
                        httpx.get(f"{server.base_url}/v1/adapters", headers=auth("acme")).json()["data"]]  # fmt: skip
    _serving(server)


def test_malicious_paths_and_sources(env, tiny_model: TinyModel) -> None:
    server, root, tmp = env
    base = server.base_url
    good = tiny_model.adapters / "beta"
    files = [("files", ("../../escape.json", b"{}")), *multipart_files(good)]
    r = httpx.post(f"{base}/v1/adapters", data={"name": "x"}, headers=auth("acme"), files=files)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_path"
    shutil.copytree(good, root / "linked")
    os.symlink("/etc/hostname", root / "linked" / "extra.json")
    os.symlink(good, root / "dirlink")
    (root / "outside-link").symlink_to(tmp)
    cases = [
        ("/etc", 403), (str(root / ".." / "upload-pickle"), 403), (str(root / "outside-link"), 403),
        (str(root / "linked"), 422), (str(root / "dirlink"), 403), (str(root / "missing"), 400),
    ]  # fmt: skip
    for source, want in cases:
        r = httpx.post(f"{base}/v1/adapters", json={"name": "src", "source": source},
                       headers=auth("admin"))  # fmt: skip
        assert r.status_code == want, (source, r.text)
        r = httpx.post(f"{base}/v1/load_lora_adapter", headers=auth("admin"),
                       json={"lora_name": "src", "lora_path": source})  # fmt: skip
        assert r.status_code == want, (source, r.text)
        _serving(server)
    shutil.copytree(good, root / "fine")
    r = httpx.post(f"{base}/v1/load_lora_adapter", headers=auth("admin"),
                   json={"lora_name": "src", "lora_path": str(root / "fine")})  # fmt: skip
    assert r.status_code == 200
    r = httpx.post(f"{base}/v1/completions", headers=auth("beta"), timeout=60,
                   json={"model": "src", "prompt": "Hi", "max_tokens": 2})  # fmt: skip
    assert r.status_code == 200  # admin-registered = shared
