"""The load test's workload, without locust: configuration, Zipf popularity, request bodies.

Everything here is plain data and functions so it can be unit-tested without starting gevent.
The locust users (locustfile.py) read a `Workload` once and draw requests from it.

Environment (all optional):
- `LOADTEST_MODELS`: comma-separated model names to load; default: every model `/v1/models`
  lists for the caller (adapters the admin user registers, `lt-*`, are left out).
- `LOADTEST_API_KEYS`: comma-separated tenant keys, or `LOADTEST_API_KEYS_FILE`: the server's
  `--api-keys` JSON file (`user` keys go to inference users, an `admin` key to the admin user)
  or a text file with one key per line. `LOADTEST_ADMIN_KEY` overrides the admin's key.
- `LOADTEST_ZIPF_S` (1.1): Zipf exponent of adapter popularity; rank 1 is the first model.
- `LOADTEST_CHAT_FRACTION` (0.5), `LOADTEST_STREAM_FRACTION` (0.5), `LOADTEST_MIX_FRACTION`
  (0.1): shares of chat requests, streamed requests and ad-hoc mixes.
- `LOADTEST_MIXES`: ad-hoc mixes as `a+b;c+d`; default: LoRA adapters that share rank and
  target modules (from `/v1/adapters`), paired up.
- `LOADTEST_MAX_TOKENS` (16), `LOADTEST_PROMPTS` (a file, one prompt per line).
- `LOADTEST_UPLOAD_DIR`: an adapter directory the admin user uploads under fresh names and
  deletes again; without it the admin user only lists adapters.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADMIN_PREFIX = "lt-"
"""Names the admin user registers; never picked by inference users."""

DEFAULT_PROMPTS = (
    "hello world",
    "the big fox jumps over the lazy dog",
    "serve me a story about adapters",
    "one base model, many tenants",
    "batch them all together",
)


@dataclass(frozen=True)
class Keys:
    """Tenant keys for inference users and the admin user's key (None: open server)."""

    users: tuple[str, ...] = ()
    admin: str | None = None

    def user_key(self, index: int) -> str | None:
        """Users take the keys round-robin, so every tenant gets traffic."""
        return self.users[index % len(self.users)] if self.users else self.admin


def read_keys(env: Mapping[str, str]) -> Keys:
    """Keys from LOADTEST_API_KEYS / LOADTEST_API_KEYS_FILE / LOADTEST_ADMIN_KEY."""
    users: list[str] = [k.strip() for k in env.get("LOADTEST_API_KEYS", "").split(",") if k.strip()]
    admin = None
    path = env.get("LOADTEST_API_KEYS_FILE")
    if path:
        text = Path(path).read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            for entry in json.loads(text).get("keys", []):
                if "key" not in entry:
                    continue  # a key_sha256 entry: the plain key is not in the file
                if entry.get("role") == "admin":
                    admin = admin or entry["key"]
                else:
                    users.append(entry["key"])
        else:
            users += [line.strip() for line in text.splitlines() if line.strip()]
    return Keys(tuple(users), env.get("LOADTEST_ADMIN_KEY") or admin)


class Zipf:
    """Draws items with probability ∝ 1 / rank^s (rank 1 = the first item)."""

    def __init__(self, items: list[str], s: float):
        if not items:
            raise ValueError("Zipf needs at least one item")
        self.items = list(items)
        weights = [1.0 / (rank**s) for rank in range(1, len(items) + 1)]
        self.cumulative = list(itertools.accumulate(weights))

    def draw(self, rng: random.Random) -> str:
        x = rng.random() * self.cumulative[-1]
        return self.items[min(bisect.bisect_right(self.cumulative, x), len(self.items) - 1)]


def parse_mixes(text: str) -> list[tuple[str, ...]]:
    """`a+b;c+d` → [("a", "b"), ("c", "d")]."""
    mixes = [tuple(m.strip() for m in group.split("+") if m.strip()) for group in text.split(";")]
    return [m for m in mixes if len(m) >= 2]


def mixes_from_adapters(adapters: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Pairs of LoRA adapters with the same rank and target modules (mixable together)."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for a in adapters:
        if a.get("kind") == "lora" and not a["id"].startswith(ADMIN_PREFIX):
            key = (a.get("rank"), tuple(sorted(a.get("target_modules") or ())))
            groups.setdefault(key, []).append(a["id"])
    return [tuple(names[:2]) for names in groups.values() if len(names) >= 2]


@dataclass
class Workload:
    """What inference users send: models by popularity, the request mix, prompts."""

    base: str
    models: list[str]
    mixes: list[tuple[str, ...]] = field(default_factory=list)
    zipf_s: float = 1.1
    chat_fraction: float = 0.5
    stream_fraction: float = 0.5
    mix_fraction: float = 0.1
    max_tokens: int = 16
    prompts: tuple[str, ...] = DEFAULT_PROMPTS

    def __post_init__(self) -> None:
        self.popularity = Zipf(self.models, self.zipf_s)

    def next_request(self, rng: random.Random) -> tuple[str, dict[str, Any], str]:
        """(path, JSON body, entry name) of the next request."""
        chat = rng.random() < self.chat_fraction
        stream = rng.random() < self.stream_fraction
        prompt = rng.choice(self.prompts)
        body: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": 0.7, "stream": stream}
        if self.mixes and rng.random() < self.mix_fraction:
            body["model"] = self.base
            body["adapters"] = [{"name": n} for n in rng.choice(self.mixes)]
            kind = "mix"
        else:
            body["model"] = self.popularity.draw(rng)
            kind = "base" if body["model"] == self.base else "adapter"
        if stream:
            body["stream_options"] = {"include_usage": True}
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/v1/completions"
        name = f"{path} {kind}{' stream' if stream else ''}"
        return path, body, name


def build_workload(
    env: Mapping[str, str], listed: list[dict[str, Any]], adapters: list[dict[str, Any]]
) -> Workload:
    """The workload from the environment and what the server lists (/v1/models, /v1/adapters)."""
    base = next((m["id"] for m in listed if not m.get("parent")), None)
    if base is None:
        raise ValueError("/v1/models lists no base model")
    names = [m["id"] for m in listed if not m["id"].startswith(ADMIN_PREFIX)]
    if env.get("LOADTEST_MODELS"):
        names = [n.strip() for n in env["LOADTEST_MODELS"].split(",") if n.strip()]
    mixes = parse_mixes(env["LOADTEST_MIXES"]) if "LOADTEST_MIXES" in env else (
        mixes_from_adapters(adapters))  # fmt: skip
    prompts = DEFAULT_PROMPTS
    if env.get("LOADTEST_PROMPTS"):
        lines = Path(env["LOADTEST_PROMPTS"]).read_text(encoding="utf-8").splitlines()
        prompts = tuple(line for line in lines if line.strip()) or DEFAULT_PROMPTS
    return Workload(
        base=base,
        models=names,
        mixes=mixes,
        zipf_s=float(env.get("LOADTEST_ZIPF_S", 1.1)),
        chat_fraction=float(env.get("LOADTEST_CHAT_FRACTION", 0.5)),
        stream_fraction=float(env.get("LOADTEST_STREAM_FRACTION", 0.5)),
        mix_fraction=float(env.get("LOADTEST_MIX_FRACTION", 0.1)),
        max_tokens=int(env.get("LOADTEST_MAX_TOKENS", 16)),
        prompts=prompts,
    )


def upload_files(directory: Path) -> list[tuple[str, bytes]]:
    """(relative path, content) of every file of an adapter directory, for a multipart upload."""
    return [
        (p.relative_to(directory).as_posix(), p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    ]
