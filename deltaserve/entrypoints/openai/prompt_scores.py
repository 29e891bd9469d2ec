"""Prompt logprobs in the two public shapes: OpenAI's legacy `echo` + `logprobs` (parallel
lists, the first token's entries null) and vLLM's `prompt_logprobs` (per position a dict
token id → {logprob, rank, decoded_token}, the first position null)."""

from __future__ import annotations

from deltaserve.engine.outputs import TokenLogprob
from deltaserve.entrypoints.openai.protocol import CompletionLogprobs, PromptLogprob, PromptLogprobs
from deltaserve.entrypoints.state import ServerState


def echo_logprobs(
    state: ServerState, prompt_ids: list[int], scores: list[TokenLogprob | None], k: int
) -> CompletionLogprobs:
    """Legacy logprobs of the prompt tokens (text offsets from 0), `k` alternatives each."""
    result = CompletionLogprobs()
    offset = 0
    for token_id, lp in zip(prompt_ids, scores, strict=True):
        token = state.token_str(token_id)
        result.tokens.append(token)
        result.text_offset.append(offset)
        offset += len(token)
        if lp is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        top = {state.token_str(t): v for t, v in lp.top[:k]}
        top.setdefault(token, lp.logprob)
        result.token_logprobs.append(lp.logprob)
        result.top_logprobs.append(top)
    return result


def concat(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    """Prompt logprobs followed by the generated tokens' (b's offsets already shifted)."""
    return CompletionLogprobs(
        tokens=a.tokens + b.tokens,
        token_logprobs=a.token_logprobs + b.token_logprobs,
        top_logprobs=a.top_logprobs + b.top_logprobs,
        text_offset=a.text_offset + b.text_offset,
    )


def vllm_prompt_logprobs(
    state: ServerState, scores: list[TokenLogprob | None], k: int
) -> PromptLogprobs:
    """vLLM's prompt_logprobs: the prompt token first, then the top `k` (ranks 1..k)."""
    result: PromptLogprobs = []
    for lp in scores:
        if lp is None:
            result.append(None)
            continue
        entry = {str(lp.token_id): PromptLogprob(
            logprob=lp.logprob, rank=lp.rank, decoded_token=state.token_str(lp.token_id))}
        for rank, (t, v) in enumerate(lp.top[:k], start=1):
            entry.setdefault(str(t), PromptLogprob(logprob=v, rank=rank,
                                                   decoded_token=state.token_str(t)))
        result.append(entry)
    return result
