"""Adapter admin routes: /v1/adapters (list, register, inspect, remove) and vLLM's
/v1/load_lora_adapter and /v1/unload_lora_adapter.

Registration takes multipart form data (`name`, the adapter directory's files as `files`, each
file name its path inside the directory; optional `replace`, `shared`) or JSON
`{"name", "source", "replace"?, "shared"?}` naming a server-side directory under an allowed
--adapter-source-root. `shared` defaults to true for admins (open servers included) and may
not be set by users. Every caller sees shared adapters plus its own tenant's; anything else
is 404. Errors are the store's typed errors, mapped to OpenAI's shape in errors.py.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from deltaserve.adapter_store.paths import MAX_FILES
from deltaserve.adapter_store.store import AdapterStore, Caller
from deltaserve.entrypoints.errors import BadRequestError, ServiceUnavailableError
from deltaserve.entrypoints.state import PrincipalDep, ServerState, StateDep
from deltaserve.tenancy.auth import Principal

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["adapters"])

_TRUE = {"1", "true", "yes", "on"}


class RegisterSource(BaseModel):
    name: str
    source: str
    replace: bool = False
    shared: bool | None = None


class LoadLoraAdapter(BaseModel):
    """vLLM's request shape."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoraAdapter(BaseModel):
    lora_name: str
    lora_int_id: int | None = None


def _store(state: ServerState) -> AdapterStore:
    if state.store is None:
        raise ServiceUnavailableError("This server has no adapter store.", code="no_adapter_store")
    return state.store


def _caller(principal: Principal) -> Caller:
    return Caller(tenant=principal.tenant, admin=principal.role == "admin")


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        raise BadRequestError(f"Invalid request body: {first.get('msg')}.", param=field) from None


@router.get("/adapters")
async def list_adapters(state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    """Every adapter the caller may use."""
    store = _store(state)
    data = [m.public(state.base_model_id) for m in store.list(principal.tenant)]
    return {"object": "list", "data": data}


@router.get("/adapters/{name}")
async def get_adapter(name: str, state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    return _store(state).get(name, principal.tenant).public(state.base_model_id)


@router.post("/adapters", status_code=201)
async def register_adapter(request: Request, state: StateDep, principal: PrincipalDep) -> Response:
    """Register (or with `replace`, atomically replace) an adapter; 201 with its manifest."""
    store = _store(state)
    caller = _caller(principal)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_FILES + 1, max_fields=16)
        try:
            name = form.get("name")
            uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if not isinstance(name, str):
                raise BadRequestError("Missing form field 'name'.", param="name")
            files = [(u.filename or "", u.file) for u in uploads]
            manifest = await store.register_upload(
                name, files, caller, shared=_flag(form.get("shared")),
                replace=_flag(form.get("replace")) or False,
            )  # fmt: skip
        finally:
            await form.close()
    else:
        body: RegisterSource = _parse(RegisterSource, await request.body())
        manifest = await store.register_source(
            body.name, body.source, caller, shared=body.shared, replace=body.replace
        )
    return JSONResponse(manifest.public(state.base_model_id), status_code=201)


def _flag(value: object) -> bool | None:
    if value is None:
        return None
    return str(value).strip().lower() in _TRUE


@router.delete("/adapters/{name}")
async def delete_adapter(name: str, state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    """Unregister: new requests get 404 at once; waits for in-flight ones (bounded)."""
    manifest = await _store(state).unregister(name, _caller(principal))
    return {"id": manifest.name, "object": "adapter", "deleted": True}


@router.post("/load_lora_adapter")
async def load_lora_adapter(request: Request, state: StateDep, principal: PrincipalDep) -> Response:
    """vLLM-compatible registration from a server-side path (same roots as `source`)."""
    body: LoadLoraAdapter = _parse(LoadLoraAdapter, await request.body())
    await _store(state).register_source(
        body.lora_name, body.lora_path, _caller(principal), replace=body.load_inplace
    )
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter")
async def unload_lora_adapter(
    request: Request, state: StateDep, principal: PrincipalDep
) -> Response:
    body: UnloadLoraAdapter = _parse(UnloadLoraAdapter, await request.body())
    await _store(state).unregister(body.lora_name, _caller(principal))
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
