"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from deltaserve.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from deltaserve.entrypoints.openai.serving_chat import create_chat_completion
from deltaserve.entrypoints.openai.serving_completions import create_completion
from deltaserve.entrypoints.state import PrincipalDep, StateDep

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList)
async def list_models(state: StateDep, principal: PrincipalDep) -> ModelList:
    """The base model and every adapter the caller may use (adapters name the base as parent)."""
    base = state.base_model_id
    max_len = state.engine.max_model_len if state.engine is not None and state.ready else None
    dtype = (state.engine.stats().dtype or None) if state.engine is not None else None
    cards = [ModelCard(id=base, created=state.started_at, root=base, max_model_len=max_len,
                       dtype=dtype, quantization=state.base_quantization)]
    for info in state.resolver.list(tenant=principal.tenant):
        if info.name == base:
            continue  # the base id wins; such an adapter is unreachable by name
        cards.append(
            ModelCard(
                id=info.name, created=info.created, root=info.name, parent=base, kind=info.kind,
                max_model_len=max_len,
            )
        )
    return ModelList(data=cards)


@router.post("/completions")
async def completions(
    body: CompletionRequest, state: StateDep, principal: PrincipalDep, raw: Request
) -> Response:
    """OpenAI completions (streaming with `stream: true`)."""
    return await create_completion(state, body, principal, raw)


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, state: StateDep, principal: PrincipalDep, raw: Request
) -> Response:
    """OpenAI chat completions (streaming with `stream: true`)."""
    return await create_chat_completion(state, body, principal, raw)
