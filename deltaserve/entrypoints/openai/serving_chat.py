"""POST /v1/chat/completions: chat completions, plain and streamed.

Messages are rendered with the tokenizer's chat template (prompts.chat_prompt). A stream starts
with one `{"role": "assistant", "content": ""}` delta per choice, then content deltas, and the
choice's last chunk carries its finish_reason, as OpenAI sends them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from deltaserve.engine.outputs import RequestOutput, TokenLogprob
from deltaserve.entrypoints.errors import BadRequestError
from deltaserve.entrypoints.mixing import acquire_for_request
from deltaserve.entrypoints.openai.deltas import (
    DeltaTracker,
    holdback_chars,
    public_finish_reason,
    usage_of,
)
from deltaserve.entrypoints.openai.generation import (
    GenerationRun,
    respond,
)
from deltaserve.entrypoints.openai.prompt_scores import vllm_prompt_logprobs
from deltaserve.entrypoints.openai.prompts import chat_prompt, message_text
from deltaserve.entrypoints.openai.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChatResponseMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    DeltaMessage,
    TopLogprob,
    UsageInfo,
)
from deltaserve.entrypoints.openai.sampling import check_unsupported, sampling_params
from deltaserve.entrypoints.openai.sse import event_stream, sse_data
from deltaserve.entrypoints.openai.structured import request_grammar
from deltaserve.entrypoints.quota_http import open_run
from deltaserve.entrypoints.state import ServerState
from deltaserve.tenancy.auth import Principal


def chat_logprobs(state: ServerState, logprobs: list[TokenLogprob]) -> ChatChoiceLogprobs:
    """OpenAI chat logprobs for consecutive generated tokens."""

    def entry(token_id: int, logprob: float) -> TopLogprob:
        token = state.token_str(token_id)
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))

    content = []
    for lp in logprobs:
        chosen = entry(lp.token_id, lp.logprob)
        top = [entry(t, v) for t, v in lp.top]
        content.append(ChatTokenLogprob(**chosen.model_dump(), top_logprobs=top))
    return ChatChoiceLogprobs(content=content)


def _engine_logprobs(req: ChatCompletionRequest) -> int | None:
    if req.top_logprobs is not None and not req.logprobs:
        raise BadRequestError("top_logprobs requires logprobs to be true.", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


def check_roles(messages: list[ChatMessage]) -> None:
    """400 naming messages[i].role for a role OpenAI's chat API does not know."""
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise BadRequestError(
                f"Invalid value for 'messages[{i}].role': {m.role!r} is not one of "
                f"{', '.join(CHAT_ROLES)}.",
                param=f"messages[{i}].role",
            )


def _check_request(req: ChatCompletionRequest) -> None:
    check_unsupported(req, req.n)
    check_roles(req.messages)
    if req.prompt_logprobs is not None and req.stream:
        raise BadRequestError("prompt_logprobs is not available with stream.",
                              param="prompt_logprobs")


def _response(
    state: ServerState, req: ChatCompletionRequest, run: GenerationRun, with_logprobs: bool
) -> ChatCompletionResponse:
    final = run.last[0]
    assert final is not None
    choices = [
        ChatChoice(
            index=out.index,
            message=ChatResponseMessage(content=out.text),
            logprobs=chat_logprobs(state, out.logprobs or []) if with_logprobs else None,
            finish_reason=public_finish_reason(out.finish_reason),
        )
        for out in sorted(final.outputs, key=lambda o: o.index)
    ]
    plp = None
    if req.prompt_logprobs is not None and final.prompt_logprobs is not None:
        plp = vllm_prompt_logprobs(state, final.prompt_logprobs, req.prompt_logprobs)
    return ChatCompletionResponse(
        id=run.request_id, model=req.model, choices=choices, usage=usage_of(run.last),
        system_fingerprint=state.system_fingerprint, prompt_logprobs=plp,
    )


async def create_chat_completion(
    state: ServerState, req: ChatCompletionRequest, principal: Principal, raw: Request
) -> Response:
    """Serve one chat completions request."""
    engine = state.serving_engine()
    adapter = state.resolve_model(req.model, principal)
    _check_request(req)
    logprobs = _engine_logprobs(req)
    messages = [{"role": m.role, "content": message_text(m.content)} for m in req.messages]
    prompt = chat_prompt(engine.tokenizer, messages, req.add_generation_prompt)
    max_tokens = req.max_completion_tokens or req.max_tokens
    grammar = await request_grammar(state, req)
    params = sampling_params(
        state, req, len(prompt.token_ids), max_tokens, logprobs, prompt_param="messages",
        prompt_logprobs=req.prompt_logprobs, grammar=grammar,
    )
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    run = await open_run(state, principal.tenant, raw, request_id, [prompt], [params], adapter,
                         lambda: acquire_for_request(state, req, principal))  # fmt: skip
    return await respond(
        run,
        raw,
        req.stream,
        lambda first, rest: _stream_events(state, req, run, first, rest),
        lambda: _response(state, req, run, logprobs is not None),
    )


class _ChatChunker:
    """Turns cumulative engine outputs into chat completion chunks."""

    def __init__(self, state: ServerState, req: ChatCompletionRequest, run: GenerationRun):
        self.state, self.req, self.run = state, req, run
        self.created = int(time.time())
        holdback = holdback_chars(run.params[0])
        self.trackers = [DeltaTracker(holdback=holdback) for _ in range(req.n)]

    def chunk(self, choices: list[ChatStreamChoice], usage: UsageInfo | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=self.run.request_id, created=self.created, model=self.req.model, choices=choices,
            system_fingerprint=self.state.system_fingerprint,
        )
        data = chunk.model_dump(mode="json")
        if self.req.include_usage:
            data["usage"] = None if usage is None else usage.model_dump()
        else:
            data.pop("usage", None)
        return sse_data(data)

    def role_events(self) -> list[str]:
        """OpenAI opens every choice with the assistant role and empty content."""
        delta = DeltaMessage(role="assistant", content="")
        return [self.chunk([ChatStreamChoice(index=j, delta=delta)]) for j in range(self.req.n)]

    def events(self, _: int, out: RequestOutput) -> list[str]:
        events = []
        for o in out.outputs:
            delta = self.trackers[o.index].take(o)
            if delta is None:
                continue
            logprobs = None
            if self.req.logprobs:
                logprobs = chat_logprobs(self.state, delta.logprobs or [])
            choice = ChatStreamChoice(
                index=o.index,
                delta=DeltaMessage(content=delta.text or None),
                logprobs=logprobs,
                finish_reason=public_finish_reason(delta.finish_reason),
            )
            events.append(self.chunk([choice]))
        return events

    def usage_event(self) -> str | None:
        return self.chunk([], usage_of(self.run.last)) if self.req.include_usage else None


def _stream_events(
    state: ServerState,
    req: ChatCompletionRequest,
    run: GenerationRun,
    first: tuple[int, RequestOutput],
    rest: AsyncIterator[tuple[int, RequestOutput]],
) -> AsyncIterator[str]:
    """SSE events: role deltas, content deltas, finish chunks, usage (if asked), [DONE]."""
    chunker = _ChatChunker(state, req, run)
    return event_stream(chunker.role_events(), first, rest, chunker.events, chunker.usage_event)
