"""SDK fixtures: a real server with API keys (the tiny model and its shared LoRAs alpha/beta/
gamma from tests/integration), and SDK clients for its tenants.

Keys (tests/integration/adapter_store/conftest.py): key-admin (tenant ops, admin), key-acme
(tenant acme), key-beta (tenant beta).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from deltaserve_client import Client

from tests.integration.adapter_store.conftest import write_keys
from tests.integration.server.conftest import (  # noqa: F401  (fixtures re-exported)
    BASE_ID,
    RunningServer,
    TinyModel,
    start_server,
    tiny_model,
)

FAST_RETRY = {"initial_retry_delay": 0.01, "max_retry_delay": 0.05}
"""Backoff small enough that retry tests spend no noticeable time sleeping."""


class AttemptCounter:
    """An httpx event hook recording the status of every response (one per attempt)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def __call__(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)


def sdk_client(server: RunningServer, who: str | None, **kwargs: object) -> Client:
    """A Client for tenant `who` (None: no key), with fast retries unless overridden."""
    settings = {**FAST_RETRY, "timeout": 60.0, **kwargs}
    key = None if who is None else f"key-{who}"
    return Client(server.base_url, api_key=key, **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def keyed_server(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> Iterator[RunningServer]:
    """A multi-tenant server (API keys, an upload store) shared by a test module."""
    tmp = tmp_path_factory.mktemp("sdk")
    sources = tmp / "sources"
    sources.mkdir()
    # float32 on every CPU: the oracles compare greedy texts across code paths (a mix against
    # its member), which bf16 rounding (--dtype auto on CPUs with native bf16) would perturb.
    server = start_server(
        tiny_model, api_keys=write_keys(tmp / "keys.json"), data_dir=tmp / "data",
        adapter_source_root=[sources], max_num_seqs=8, dtype="float32",
    )  # fmt: skip
    server.sources = sources  # type: ignore[attr-defined]
    yield server
    server.stop()
