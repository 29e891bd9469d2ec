"""deltaserve load test (locust): tenants' inference traffic plus an admin churning adapters.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000      # web UI
    make loadtest                                                       # headless, bounded

Run it from the repository root (locust puts the working directory on sys.path, which is how
`loadtests.*` imports resolve). The workload is configured by environment variables,
documented in loadtests/workload.py.

Besides one entry per request type (`/v1/chat/completions adapter stream`, ...), streamed
requests report what the client saw as their own entries: `TTFT stream` (request sent → first
generated text), `TPOT stream` (mean gap between later tokens) and `E2E stream` (whole
stream). A streamed request's own entry times only the response headers.
"""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from loadtests.stream import read_stream
from loadtests.workload import ADMIN_PREFIX, Workload, build_workload, read_keys, upload_files

KEYS = read_keys(os.environ)
_user_numbers = itertools.count()


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _report(kind: str, seconds: float | None) -> None:
    """One client-side stream measurement as its own locust entry (milliseconds)."""
    if seconds is not None:
        events.request.fire(
            request_type=kind, name="stream", response_time=seconds * 1000.0,
            response_length=0, exception=None, context={},
        )  # fmt: skip


class InferenceUser(HttpUser):
    """A tenant: completions and chat, streamed or not, over models drawn by Zipf popularity."""

    weight = 10
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        self.headers = _auth(KEYS.user_key(next(_user_numbers)))
        self.rng = random.Random()
        self.workload = self._discover()

    def _discover(self) -> Workload:
        models = self.client.get("/v1/models", headers=self.headers, name="/v1/models")
        models.raise_for_status()
        adapters: list[dict[str, Any]] = []
        if "LOADTEST_MIXES" not in os.environ:
            listed = self.client.get("/v1/adapters", headers=self.headers, name="/v1/adapters")
            adapters = listed.json()["data"] if listed.ok else []
        return build_workload(os.environ, models.json()["data"], adapters)

    @task
    def generate(self) -> None:
        path, body, name = self.workload.next_request(self.rng)
        if body["stream"]:
            self._stream(path, body, name)
            return
        with self.client.post(
            path, json=body, headers=self.headers, name=name, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:300]}")
            elif not r.json().get("choices"):
                r.failure("a response without choices")

    def _stream(self, path: str, body: dict[str, Any], name: str) -> None:
        start = time.perf_counter()
        with self.client.post(
            path, json=body, headers=self.headers, name=name, stream=True, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:300]}")
                return
            try:
                timing = read_stream(r.iter_lines(), start)
            except (ValueError, OSError) as exc:  # a malformed event, a cut connection
                r.failure(f"{type(exc).__name__}: {exc}")
                return
            if timing.error is not None:
                r.failure(timing.error)
                return
        _report("TTFT", timing.ttft_s)
        _report("TPOT", timing.tpot_s)
        _report("E2E", time.perf_counter() - start)


class AdminUser(HttpUser):
    """One operator registering a fresh adapter, using it once and deleting it, in a loop.

    Uploads LOADTEST_UPLOAD_DIR's files (multipart) under a new `lt-*` name each time; without
    that directory it only lists adapters.
    """

    fixed_count = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.headers = _auth(KEYS.admin or KEYS.user_key(0))
        upload = os.environ.get("LOADTEST_UPLOAD_DIR")
        self.files = upload_files(Path(upload)) if upload else []

    @task
    def churn(self) -> None:
        if not self.files:
            self.client.get("/v1/adapters", headers=self.headers, name="/v1/adapters")
            return
        name = f"{ADMIN_PREFIX}{uuid.uuid4().hex[:12]}"
        with self.client.post(
            "/v1/adapters", data={"name": name}, headers=self.headers, name="/v1/adapters",
            files=[("files", (path, content)) for path, content in self.files],
            catch_response=True,
        ) as r:  # fmt: skip
            if r.status_code != 201:
                r.failure(f"HTTP {r.status_code}: {r.text[:300]}")
                return
        body = {"model": name, "prompt": "hello", "max_tokens": 4}
        with self.client.post(
            "/v1/completions", json=body, headers=self.headers,
            name="/v1/completions just registered", catch_response=True,
        ) as r:  # fmt: skip
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:300]}")
        with self.client.delete(
            f"/v1/adapters/{name}", headers=self.headers, name="/v1/adapters/[name]",
            catch_response=True,
        ) as r:  # fmt: skip
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:300]}")
