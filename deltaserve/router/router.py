"""Resolving a mix to what the engine runs: one materialised PEFT LoRA, cached by content.

`MixRouter.acquire` leases every member (with the caller's tenant visibility, through the
`MemberSource` the server passes in: the router never touches the store itself), checks that
they are compatible LoRAs, and returns a `MixLease` whose AdapterRequest points at the
materialisation `<cache_dir>/<key>/` with uid `mix-<key>`, key = sha256(members' content
sha256s + routing). A replaced member has a new content sha256, hence a new key: the mix is
rebuilt by construction. `forget_member(sha)` (called when the store retires a member's
content, on every replica through the store's pub/sub events) drops every materialisation
built from it, from disk and from the engine. Materialisations are deterministic functions
of shared content, so each replica rebuilds its own copy instead of shipping it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from deltaserve.engine.adapters.base import AdapterRequest
from deltaserve.router.materialise import MixShapeError, materialise
from deltaserve.router.mix import MixMemberError, MixSpec
from deltaserve.router.peft_io import MIX_INFO, check_compatible, read_peft, write_peft

logger = logging.getLogger(__name__)


class MemberLease(Protocol):
    """A hold on one adapter version (the store's Lease satisfies it)."""

    @property
    def adapter(self) -> AdapterRequest: ...

    def release(self) -> None: ...


MemberSource = Callable[[str, str], Awaitable[MemberLease]]
"""(name, tenant) → a lease with the content local; raises LookupError when not visible."""


@dataclass
class MixLease:
    """A request's hold on a materialised mix and on every member version it was built from."""

    adapter: AdapterRequest
    held: list[MemberLease] = field(default_factory=list)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            for lease in self.held:
                lease.release()


class MixRouter:
    """Materialises mixes on demand; one instance per replica."""

    def __init__(
        self, cache_dir: Path, acquire: MemberSource,
        drop_from_engine: Callable[[str], None] | None = None,
    ):  # fmt: skip
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._acquire = acquire
        self._drop = drop_from_engine
        self._builds: dict[str, asyncio.Future[Path]] = {}
        self.built: dict[str, tuple[str, ...]] = self._index_existing()
        """key → the member content sha256s it was built from."""

    def _index_existing(self) -> dict[str, tuple[str, ...]]:
        found = {}
        for entry in self.cache_dir.iterdir():
            if (entry / MIX_INFO).is_file():
                found[entry.name] = tuple(json.loads((entry / MIX_INFO).read_text())["members"])
            elif entry.name.startswith(".staging-"):
                shutil.rmtree(entry, ignore_errors=True)
        return found

    async def acquire(
        self, name: str, spec: MixSpec, tenant: str, held: list[MemberLease] | None = None
    ) -> MixLease:
        """Lease the members, materialise (or reuse) the mix; the caller releases the lease.

        Raises MixMemberError (a member missing, not a LoRA, incompatible) and MixSpecError.
        `held` leases (e.g. on the mix's own registration) are released with the result.
        """
        lease = MixLease(AdapterRequest(name=name, path="", kind="lora"), list(held or []))
        try:
            for member in spec.inventory:
                try:
                    got = await self._acquire(member, tenant)
                except LookupError:
                    raise MixMemberError(
                        f"mix member `{member}` does not exist (deleted?) or is not visible.",
                        missing=member,
                    ) from None
                lease.held.append(got)
                if got.adapter.kind != "lora":
                    raise MixMemberError(
                        f"mix member `{member}` is a `{got.adapter.kind}` adapter; members must be LoRAs."
                    )
            members = lease.held[len(held or []):]
            uids = [m.adapter.uid or m.adapter.path for m in members]
            key = spec.cache_key(uids)
            path = await self._materialised(key, spec, members, uids)
            lease.adapter = AdapterRequest(name=name, path=str(path), kind="lora", uid=f"mix-{key}")
            return lease
        except BaseException:
            lease.release()
            raise

    async def _materialised(
        self, key: str, spec: MixSpec, members: list[MemberLease], uids: list[str]
    ) -> Path:
        """The materialisation's directory, built once per key (single flight)."""
        path = self.cache_dir / key
        if key in self.built and path.is_dir():
            return path
        future = self._builds.get(key)
        if future is None:
            paths = [Path(m.adapter.path) for m in members]
            future = asyncio.ensure_future(asyncio.to_thread(build_mix, path, spec, paths, uids))
            self._builds[key] = future
            future.add_done_callback(lambda _: self._builds.pop(key, None))
        await asyncio.shield(future)
        self.built[key] = tuple(uids)
        return path

    def forget_member(self, sha: str) -> list[str]:
        """Drop every materialisation built from content `sha`; returns their keys."""
        stale = [key for key, uids in self.built.items() if sha in uids]
        for key in stale:
            del self.built[key]
            if self._drop is not None:
                self._drop(f"mix-{key}")
            shutil.rmtree(self.cache_dir / key, ignore_errors=True)
            logger.info("dropped mix materialisation %s (member %s retired)", key[:12], sha[:12])
        return stale


def build_mix(dest: Path, spec: MixSpec, paths: list[Path], uids: list[str]) -> Path:
    """Read the members, check them, materialise and write the PEFT LoRA (worker thread)."""
    if dest.is_dir():
        return dest
    labels = list(spec.inventory)
    members = [read_peft(p, label) for p, label in zip(paths, labels, strict=True)]
    check_compatible(members, labels)
    routing = torch.tensor(spec.routing, dtype=torch.float32)
    try:
        tensors = materialise([m.tensors for m in members], routing)
    except MixShapeError as exc:
        raise MixMemberError(f"the members cannot be mixed: {exc}") from None
    info = {"inventory": labels, "members": uids, "routing": spec.routing}
    return write_peft(dest, members[0], tensors, info)
