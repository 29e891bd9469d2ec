"""One function per API call: arguments → RequestSpec. Shared by the sync and async clients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from deltaserve_client._base import RequestSpec, split_options, to_json
from deltaserve_client.types import (
    Adapter,
    AdapterDeleted,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    Model,
)

Prompt = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]]
"""A string, a list of strings, token ids (used as given: no BOS is added) or lists of them."""
Messages = Sequence[Mapping[str, Any]]
"""OpenAI chat messages: `{"role": "user", "content": "..."}`, ..."""


def _generation(
    path: str, fixed: dict[str, Any], stream: bool, params: Mapping[str, Any],
    result: type[BaseModel], chunk: type[BaseModel],
) -> RequestSpec:  # fmt: skip
    fields, options = split_options(params)
    body = to_json({**fields, **fixed})
    if stream:
        body["stream"] = True
    return RequestSpec(
        "POST", path, json=body, parse=result.model_validate,
        stream_to=chunk if stream else None, options=options,
    )  # fmt: skip


def completion(model: str, prompt: Prompt, stream: bool, params: Mapping[str, Any]) -> RequestSpec:
    """POST /v1/completions."""
    fixed = {"model": model, "prompt": prompt}
    return _generation("/completions", fixed, stream, params, Completion, CompletionChunk)


def chat_completion(
    model: str, messages: Messages, stream: bool, params: Mapping[str, Any]
) -> RequestSpec:
    """POST /v1/chat/completions."""
    fixed = {"model": model, "messages": messages}
    return _generation(
        "/chat/completions", fixed, stream, params, ChatCompletion, ChatCompletionChunk
    )


def _list_of(item: type[BaseModel]) -> Any:
    return lambda body: [item.model_validate(x) for x in body.get("data", [])]


def list_models(options: Mapping[str, Any]) -> RequestSpec:
    """GET /v1/models."""
    return RequestSpec("GET", "/models", parse=_list_of(Model), options=dict(options))


def adapter_files(directory: str | Path) -> list[tuple[str, Path]]:
    """Every file below an adapter directory, as (posix path inside it, local path), sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not an adapter directory")
    files = [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()]
    if not files:
        raise ValueError(f"{root} contains no files")
    return files


def _flag(value: bool) -> str:
    return "true" if value else "false"


def upload_adapter(
    name: str, path: str | Path, shared: bool | None, replace: bool, options: Mapping[str, Any]
) -> RequestSpec:
    """POST /v1/adapters as multipart: `name`, flags, and the directory's files as `files`."""
    form = {"name": name, "replace": _flag(replace)}
    if shared is not None:
        form["shared"] = _flag(shared)
    return RequestSpec(
        "POST", "/adapters", parse=Adapter.model_validate, form=form,
        files=adapter_files(path), options=dict(options),
    )  # fmt: skip


def register_adapter(
    name: str, source: str, shared: bool | None, replace: bool, options: Mapping[str, Any]
) -> RequestSpec:
    """POST /v1/adapters as JSON `{name, source}`: a directory on the server's side."""
    body: dict[str, Any] = {"name": name, "source": str(source), "replace": replace}
    if shared is not None:
        body["shared"] = shared
    return RequestSpec(
        "POST", "/adapters", json=body, parse=Adapter.model_validate, options=dict(options)
    )


def list_adapters(options: Mapping[str, Any]) -> RequestSpec:
    """GET /v1/adapters."""
    return RequestSpec("GET", "/adapters", parse=_list_of(Adapter), options=dict(options))


def get_adapter(name: str, options: Mapping[str, Any]) -> RequestSpec:
    """GET /v1/adapters/{name}."""
    return RequestSpec(
        "GET", f"/adapters/{_segment(name)}", parse=Adapter.model_validate, options=dict(options)
    )


def delete_adapter(name: str, options: Mapping[str, Any]) -> RequestSpec:
    """DELETE /v1/adapters/{name}."""
    return RequestSpec(
        "DELETE", f"/adapters/{_segment(name)}", parse=AdapterDeleted.model_validate,
        options=dict(options),
    )  # fmt: skip


def _segment(name: str) -> str:
    """`name` as one URL path segment (a `/` or `..` can never reach another route)."""
    if name in ("", ".", ".."):
        raise ValueError(f"invalid adapter name {name!r}")
    return quote(name, safe="")
