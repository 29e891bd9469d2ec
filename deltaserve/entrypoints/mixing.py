"""The server's side of mixes: which adapter a generation request runs, mixes included.

`acquire_for_request` is what the completion routes call last before generating: the base
model (None), a plain adapter's lease, or — for a registered `mix` or a request's ad-hoc
`adapters` — a MixLease on its materialised LoRA (router/router.py). Member problems of a
registered mix are 409 (a member was deleted or replaced by an incompatible one: the mix is
refused until it is fixed); in an ad-hoc mix they are 404 (unknown member) or 400.
"""

from __future__ import annotations

import json
from pathlib import Path

from deltaserve.entrypoints.adapters import AdapterLease, StoreResolver
from deltaserve.entrypoints.errors import APIError, BadRequestError, ConflictError, NotFoundError
from deltaserve.entrypoints.openai.protocol import SamplingFields
from deltaserve.entrypoints.state import ServerState
from deltaserve.router.mix import MixError, MixLimits, MixMemberError, parse_adhoc, parse_registered
from deltaserve.router.router import MixRouter
from deltaserve.tenancy.auth import Principal

MIX_CONFIG = "deltaserve_adapter.json"
ADHOC_NAME = "adhoc-mix"
"""The engine-side name of ad-hoc mixes (their uid is the materialisation's content key)."""


def build_mixer(state: ServerState) -> MixRouter | None:
    """The replica's MixRouter over its store (None without a store: mixes are unavailable)."""
    store = state.store
    if store is None:
        return None

    async def acquire_member(name: str, tenant: str) -> AdapterLease:
        return await StoreResolver(store, tenant).acquire(name, tenant)

    def drop(uid: str) -> None:
        if state.engine is not None:
            state.engine.drop_adapter(uid)

    return MixRouter(store.config.data_dir / "mixes", acquire_member, drop)


def mix_limits(state: ServerState) -> MixLimits:
    s = state.settings
    return MixLimits(max_members=s.max_mix_members, max_heads=s.max_mix_heads)


async def acquire_for_request(
    state: ServerState, req: SamplingFields, principal: Principal
) -> AdapterLease | None:
    """A lease on what `req` runs with (None: the base model); release it in `finally`."""
    if req.adapters is not None:
        return await _acquire_adhoc(state, req, principal)
    lease = await state.acquire_model(req.model, principal)
    if lease is None or lease.adapter.kind != "mix":
        return lease
    try:
        cfg = json.loads((Path(lease.adapter.path) / MIX_CONFIG).read_text())
        spec = parse_registered(cfg, mix_limits(state))
        return await _router(state).acquire(req.model, spec, principal.tenant, held=[lease])
    except MixError as exc:
        lease.release()
        raise _registered_error(req.model, exc) from None
    except BaseException:
        lease.release()
        raise


async def _acquire_adhoc(
    state: ServerState, req: SamplingFields, principal: Principal
) -> AdapterLease:
    if req.model != state.base_model_id:
        raise BadRequestError(
            f"An ad-hoc mix (`adapters`) runs on the base model: set `model` to "
            f"`{state.base_model_id}`.", param="model",
        )  # fmt: skip
    try:
        members = [a.model_dump() for a in req.adapters or []]
        spec = parse_adhoc(members, req.heads, req.routing, mix_limits(state))
        return await _router(state).acquire(ADHOC_NAME, spec, principal.tenant)
    except MixMemberError as exc:
        if exc.missing is not None:
            raise NotFoundError(
                f"The adapter `{exc.missing}` does not exist or you do not have access to it.",
                param="adapters", code="model_not_found",
            ) from None  # fmt: skip
        raise BadRequestError(exc.message, param="adapters", code=exc.code) from None
    except MixError as exc:
        raise BadRequestError(exc.message, param=exc.param or "adapters", code=exc.code) from None


def _router(state: ServerState) -> MixRouter:
    if state.mixer is None:
        raise BadRequestError("Mixes are not available on this server.", code="mix_unsupported")
    return state.mixer


def _registered_error(model: str, exc: MixError) -> APIError:
    if isinstance(exc, MixMemberError):
        return ConflictError(f"The mix `{model}` cannot be served: {exc.message}", param="model",
                             code=exc.code)  # fmt: skip
    return ConflictError(f"The mix `{model}` is invalid: {exc.message}", param="model", code=exc.code)


def forget_member_content(state: ServerState, sha: str) -> None:
    """The store retired content `sha`: drop the mixes built from it (then the content itself)."""
    if state.mixer is not None:
        state.mixer.forget_member(sha)

