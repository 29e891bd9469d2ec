"""Registered and ad-hoc mixes through a real server (openai client), against PEFT running the
materialised LoRA, inside mixed batches with base and plain-LoRA rows; member replace/delete."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.integration.router.conftest import (
    REGISTERED,
    PeftOracle,
    materialisation,
    write_mix,
)
from tests.integration.server.conftest import BASE_ID, RunningServer, TinyModel

PROMPT = [0, 72, 101, 108, 108, 111, 44, 32]  # token ids (BOS + "Hello, " as byte symbols)
N = 10
ADHOC_H1 = [{"name": "m0", "weight": 0.2}, {"name": "m2", "weight": 0.8}]
ADHOC_H4 = {"adapters": [{"name": "m0"}, {"name": "m1"}, {"name": "m2"}],
            "routing": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.3, 0.3, 0.4]]}  # fmt: skip


def complete(server: RunningServer, model: str, **extra: object) -> str:
    r = server.client.completions.create(
        model=model, prompt=PROMPT, max_tokens=N, temperature=0, extra_body=extra or None
    )
    return r.choices[0].text


def decode(model: TinyModel, ids: list[int]) -> str:
    tok = AutoTokenizer.from_pretrained(model.base)
    return tok.decode([i for i in ids if i != 1])


def test_mixes_match_peft_inside_mixed_batches(
    mix_server: RunningServer, mix_model: TinyModel, oracle: PeftOracle
) -> None:
    jobs = {
        "base": (BASE_ID, {}),
        "m1": ("m1", {}),
        "mix-h2": ("mix-h2", {}),
        "poly": ("poly", {}),
        "adhoc-h1": (BASE_ID, {"adapters": ADHOC_H1}),
        "adhoc-h4": (BASE_ID, ADHOC_H4),
    }
    with ThreadPoolExecutor(len(jobs) * 2) as pool:  # every row twice, all in flight at once
        futures = {(k, i): pool.submit(complete, mix_server, m, **x)
                   for k, (m, x) in jobs.items() for i in range(2)}  # fmt: skip
        got = {k: f.result() for k, f in futures.items()}
    for k in jobs:
        assert got[(k, 0)] == got[(k, 1)]
    mixes = {
        "mix-h2": (REGISTERED["mix-h2"]["inventory"], REGISTERED["mix-h2"]["routing"]),
        "poly": (["m0", "m1"], [[0.5, 0.5]]),
        "adhoc-h1": (["m0", "m2"], [[0.2, 0.8]]),
        "adhoc-h4": (["m0", "m1", "m2"], [[float(w) for w in r] for r in ADHOC_H4["routing"]]),
    }
    want = {"base": oracle.greedy(PROMPT, N), "m1": oracle.greedy(PROMPT, N, mix_model.adapters / "m1")}
    for k, (inventory, routing) in mixes.items():
        want[k] = oracle.greedy(PROMPT, N, materialisation(mix_server, inventory, routing))
    for k in jobs:
        assert got[(k, 0)] == decode(mix_model, want[k]), k
    assert len({got[(k, 0)] for k in jobs}) >= 4  # the mixes really change the output


def test_chat_takes_an_adhoc_mix(mix_server: RunningServer) -> None:
    r = mix_server.client.chat.completions.create(
        model=BASE_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        temperature=0, extra_body={"adapters": ADHOC_H1},
    )  # fmt: skip
    assert r.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("model, extra, status, code", [
    ("mix-bad", {}, 409, "mix_member_unusable"),
    ("mix-gone", {}, 409, "mix_member_missing"),
    (BASE_ID, {"adapters": [{"name": "m0"}, {"name": "odd"}]}, 400, "mix_member_unusable"),
    (BASE_ID, {"adapters": [{"name": "m0"}, {"name": "nope"}]}, 404, "model_not_found"),
    (BASE_ID, {"adapters": [{"name": n} for n in ("m0", "m1", "m2", "odd", "poly")]}, 400, "invalid_mix"),
    (BASE_ID, {"adapters": [{"name": "m0"}], "heads": 8}, 400, "invalid_mix"),
    (BASE_ID, {"adapters": [{"name": "m0"}], "heads": 3}, 400, "mix_member_unusable"),
    (BASE_ID, {"adapters": [{"name": "m0"}, {"name": "poly"}]}, 400, "mix_member_unusable"),
    ("m0", {"adapters": [{"name": "m1"}]}, 400, None),
])  # fmt: skip
def test_unusable_mixes_get_clear_4xx(mix_server, model, extra, status, code) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        complete(mix_server, model, **extra)
    assert info.value.status_code == status, info.value.body
    assert code is None or info.value.body["code"] == code, info.value.body
    assert info.value.body["message"]


def _upload(server: RunningServer, name: str, src: Path, replace: bool = False,
            notes: bytes | None = None) -> None:  # fmt: skip
    files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir()) if p.is_file()]
    if notes is not None:  # same weights, different content (a different sha256)
        files.append(("files", ("NOTES.txt", notes)))
    r = httpx.post(f"{server.base_url}/v1/adapters", data={"name": name, "replace": str(replace).lower()},
                   files=files, timeout=60)  # fmt: skip
    assert r.status_code == 201, r.text


def test_member_replaced_rebuilds_and_deleted_refuses(
    mix_server: RunningServer, mix_model: TinyModel, oracle: PeftOracle, tmp_path: Path
) -> None:
    _upload(mix_server, "tmp", mix_model.adapters / "m1", notes=b"a copy of m1")
    _upload(mix_server, "mix-tmp", write_mix(tmp_path / "mix-tmp", {"inventory": ["m0", "tmp"]}))
    before = complete(mix_server, "mix-tmp")
    old_dir = materialisation(mix_server, ["m0", "tmp"], [[0.5, 0.5]])
    assert before == complete(mix_server, "poly")  # tmp holds m1's weights
    _upload(mix_server, "tmp", mix_model.base.parent / "spare" / "m3", replace=True)
    mix_server.wait_idle()
    assert not old_dir.exists()  # the stale materialisation was dropped
    after = complete(mix_server, "mix-tmp")
    new_dir = materialisation(mix_server, ["m0", "tmp"], [[0.5, 0.5]])
    assert new_dir != old_dir and after != before
    assert after == decode(mix_model, oracle.greedy(PROMPT, N, new_dir))
    assert httpx.delete(f"{mix_server.base_url}/v1/adapters/tmp", timeout=30).status_code == 200
    assert not new_dir.exists()
    with pytest.raises(openai.APIStatusError) as info:
        complete(mix_server, "mix-tmp")
    assert info.value.status_code == 409 and "`tmp`" in info.value.body["message"]
