"""POST /v1/completions: OpenAI's legacy completions, plain and streamed.

Choices of a request with several prompts are indexed `prompt_index * n + sample_index`, as
OpenAI does. Logprobs follow the legacy shape {tokens, token_logprobs, top_logprobs,
text_offset}; `top_logprobs` holds the requested alternatives plus the sampled token.
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
from deltaserve.entrypoints.openai.prompt_scores import concat, echo_logprobs, vllm_prompt_logprobs
from deltaserve.entrypoints.openai.prompts import PromptInput, completion_prompts
from deltaserve.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
)
from deltaserve.entrypoints.openai.sampling import check_unsupported, sampling_params
from deltaserve.entrypoints.openai.sse import event_stream, sse_data
from deltaserve.entrypoints.openai.structured import request_grammar
from deltaserve.entrypoints.quota_http import open_run
from deltaserve.entrypoints.state import ServerState
from deltaserve.tenancy.auth import Principal


def completion_logprobs(
    state: ServerState, logprobs: list[TokenLogprob], offset: int
) -> CompletionLogprobs:
    """Legacy logprobs for consecutive tokens whose text starts at character `offset`."""
    result = CompletionLogprobs()
    for lp in logprobs:
        token = state.token_str(lp.token_id)
        top = {state.token_str(t): v for t, v in lp.top}
        top.setdefault(token, lp.logprob)
        result.tokens.append(token)
        result.token_logprobs.append(lp.logprob)
        result.top_logprobs.append(top)
        result.text_offset.append(offset)
        offset += len(token)
    return result


def _echo_text(state: ServerState, prompt: PromptInput) -> str:
    if prompt.text is not None:
        return prompt.text
    assert state.engine is not None
    return state.engine.tokenizer.decode(prompt.token_ids)


def _prompt_part(state: ServerState, req: CompletionRequest, out: RequestOutput):
    """(echoed prompt logprobs or None, vLLM prompt_logprobs or None) of one prompt."""
    scores = out.prompt_logprobs
    if scores is None:
        return None, None
    echoed = None
    if req.echo and req.logprobs is not None:
        echoed = echo_logprobs(state, out.prompt_token_ids, scores, req.logprobs)
    plp = None
    if req.prompt_logprobs is not None:
        plp = vllm_prompt_logprobs(state, scores, req.prompt_logprobs)
    return echoed, plp


def _final_choices(
    state: ServerState,
    req: CompletionRequest,
    prompts: list[PromptInput],
    finals: list[RequestOutput | None],
) -> list[CompletionChoice]:
    choices = []
    for i, final in enumerate(finals):
        assert final is not None
        prefix = _echo_text(state, prompts[i]) if req.echo else ""
        echoed, plp = _prompt_part(state, req, final)
        for out in sorted(final.outputs, key=lambda o: o.index):
            logprobs = None
            if req.logprobs is not None:
                logprobs = completion_logprobs(state, out.logprobs or [], len(prefix))
                if echoed is not None:
                    logprobs = concat(echoed, logprobs)
            choices.append(
                CompletionChoice(
                    index=i * req.n + out.index,
                    text=prefix + out.text,
                    logprobs=logprobs,
                    finish_reason=public_finish_reason(out.finish_reason),
                    prompt_logprobs=plp,
                )
            )
    return choices


def _prompt_logprobs_k(req: CompletionRequest) -> int | None:
    """Alternatives per prompt position the engine must return (None: no prompt scoring)."""
    asked = [k for k in (req.logprobs if req.echo else None, req.prompt_logprobs)
             if k is not None]
    return max(asked) if asked else None


def _check_request(req: CompletionRequest) -> None:
    check_unsupported(req, req.n, req.best_of)
    if req.suffix:
        raise BadRequestError("suffix is not supported.", param="suffix")
    if req.max_tokens == 0 and not req.echo:
        raise BadRequestError("max_tokens may be 0 only with echo (to score the prompt).",
                              param="max_tokens")
    if req.prompt_logprobs is not None and req.stream:
        raise BadRequestError("prompt_logprobs is not available with stream.",
                              param="prompt_logprobs")


async def create_completion(
    state: ServerState, req: CompletionRequest, principal: Principal, raw: Request
) -> Response:
    """Serve one completions request."""
    engine = state.serving_engine()
    adapter = state.resolve_model(req.model, principal)
    _check_request(req)
    prompts = completion_prompts(engine.tokenizer, req.prompt)
    grammar = await request_grammar(state, req)
    plp = _prompt_logprobs_k(req)
    params = [
        sampling_params(state, req, len(p.token_ids), req.max_tokens, req.logprobs,
                        prompt_logprobs=plp, grammar=grammar)
        for p in prompts
    ]
    request_id = f"cmpl-{uuid.uuid4().hex}"
    run = await open_run(state, principal.tenant, raw, request_id, prompts, params, adapter,
                         lambda: acquire_for_request(state, req, principal))  # fmt: skip
    return await respond(
        run,
        raw,
        req.stream,
        lambda first, rest: _stream_events(state, req, run, first, rest),
        lambda: CompletionResponse(
            id=request_id,
            model=req.model,
            choices=_final_choices(state, req, prompts, run.last),
            usage=usage_of(run.last),
            system_fingerprint=state.system_fingerprint,
        ),
    )


class _CompletionChunker:
    """Turns cumulative engine outputs into completion chunks (one per sample with news)."""

    def __init__(self, state: ServerState, req: CompletionRequest, run: GenerationRun):
        self.state, self.req, self.run = state, req, run
        self.created = int(time.time())
        self.trackers = {
            (i, j): DeltaTracker(holdback=holdback_chars(run.params[i]))
            for i in range(len(run.prompts))
            for j in range(req.n)
        }
        self.echoed: set[tuple[int, int]] = set()
        self.token_offsets = dict.fromkeys(self.trackers, 0)

    def chunk(self, choices: list[CompletionChoice], usage: UsageInfo | None = None) -> str:
        chunk = CompletionChunk(
            id=self.run.request_id, created=self.created, model=self.req.model, choices=choices,
            system_fingerprint=self.state.system_fingerprint,
        )
        data = chunk.model_dump(mode="json")
        if self.req.include_usage:
            data["usage"] = None if usage is None else usage.model_dump()
        else:
            data.pop("usage", None)
        return sse_data(data)

    def events(self, i: int, out: RequestOutput) -> list[str]:
        events = []
        for o in out.outputs:
            key = (i, o.index)
            delta = self.trackers[key].take(o)
            if delta is None:
                continue
            prefix, echoed = "", None
            if self.req.echo and key not in self.echoed:
                self.echoed.add(key)
                prefix = _echo_text(self.state, self.run.prompts[i])
                self.token_offsets[key] = len(prefix)
                echoed, _ = _prompt_part(self.state, self.req, out)
            logprobs = None
            if self.req.logprobs is not None:
                start = self.token_offsets[key]
                logprobs = completion_logprobs(self.state, delta.logprobs or [], start)
                self.token_offsets[key] = start + sum(len(t) for t in logprobs.tokens)
                if echoed is not None:
                    logprobs = concat(echoed, logprobs)
            choice = CompletionChoice(
                index=i * self.req.n + o.index,
                text=prefix + delta.text,
                logprobs=logprobs,
                finish_reason=public_finish_reason(delta.finish_reason),
            )
            events.append(self.chunk([choice]))
        return events

    def usage_event(self) -> str | None:
        return self.chunk([], usage_of(self.run.last)) if self.req.include_usage else None


def _stream_events(
    state: ServerState,
    req: CompletionRequest,
    run: GenerationRun,
    first: tuple[int, RequestOutput],
    rest: AsyncIterator[tuple[int, RequestOutput]],
) -> AsyncIterator[str]:
    """SSE events: one chunk per sample per new text, then usage (if asked) and [DONE]."""
    chunker = _CompletionChunker(state, req, run)
    return event_stream([], first, rest, chunker.events, chunker.usage_event)
