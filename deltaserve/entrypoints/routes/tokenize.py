"""vLLM's /tokenize and /detokenize with the served model's tokenizer.

/tokenize takes a `prompt` (special tokens added unless add_special_tokens is false) or chat
`messages` (rendered with the chat template, as /v1/chat/completions renders them).
"""

from __future__ import annotations

from fastapi import APIRouter

from deltaserve.entrypoints.errors import BadRequestError, ServiceUnavailableError
from deltaserve.entrypoints.openai.prompts import chat_prompt, message_text, vocab_size
from deltaserve.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from deltaserve.entrypoints.openai.serving_chat import check_roles
from deltaserve.entrypoints.state import PrincipalDep, ServerState, StateDep

router = APIRouter(tags=["tokenize"])


def _tokenizer(state: ServerState, model: str | None, principal):
    if model is not None:
        state.resolve_model(model, principal)  # 404 for a model the caller cannot see
    if state.engine is None or not state.ready:
        raise ServiceUnavailableError("The model is not loaded yet.", code="not_ready")
    return state.engine.tokenizer


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, state: StateDep,
                   principal: PrincipalDep) -> TokenizeResponse:
    """Token ids of a prompt or of rendered chat messages."""
    tok = _tokenizer(state, body.model, principal)
    if (body.prompt is None) == (body.messages is None):
        raise BadRequestError("Give exactly one of prompt and messages.", param="prompt")
    if body.messages is not None:
        check_roles(body.messages)
        messages = [{"role": m.role, "content": message_text(m.content)} for m in body.messages]
        ids = chat_prompt(tok, messages, body.add_generation_prompt).token_ids
    else:
        ids = list(tok.encode(body.prompt, add_special_tokens=body.add_special_tokens))
    assert state.engine is not None
    strs = [state.token_str(t) for t in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=state.engine.max_model_len,
                            tokens=ids, token_strs=strs)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(body: DetokenizeRequest, state: StateDep,
                     principal: PrincipalDep) -> DetokenizeResponse:
    """The text of token ids."""
    tok = _tokenizer(state, body.model, principal)
    size = vocab_size(tok)
    bad = next((t for t in body.tokens if not 0 <= t < size), None)
    if bad is not None:
        raise BadRequestError(f"Token id {bad} is out of vocabulary (0..{size - 1}).",
                              param="tokens")
    return DetokenizeResponse(prompt=tok.decode(body.tokens))
