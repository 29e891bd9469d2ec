"""From OpenAI request fields to the engine's SamplingParams, enforcing the server's limits.

Limits: the context (prompt + max_tokens), --max-prompt-tokens, --max-n, --max-tokens-limit;
fields the engine does not implement are refused with 400 rather than silently ignored.
"""

from __future__ import annotations

from deltaserve.engine.grammar import Grammar
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.entrypoints.errors import BadRequestError, ContextLengthExceededError
from deltaserve.entrypoints.openai.protocol import SamplingFields
from deltaserve.entrypoints.state import ServerState


def check_unsupported(req: SamplingFields, n: int, best_of: int | None = None) -> None:
    """400 for OpenAI fields the engine does not implement (rather than silently ignoring them)."""
    if req.presence_penalty or req.frequency_penalty:
        raise BadRequestError(
            "presence_penalty and frequency_penalty are not supported.",
            param="presence_penalty" if req.presence_penalty else "frequency_penalty",
        )
    if req.logit_bias:
        raise BadRequestError("logit_bias is not supported.", param="logit_bias")
    if best_of is not None and best_of != n:
        raise BadRequestError("best_of is not supported (it must equal n).", param="best_of")


def resolve_max_tokens(
    state: ServerState, requested: int | None, prompt_len: int, prompt_param: str = "prompt"
) -> int:
    """max_tokens for one prompt: the request's, or all the context has left (capped)."""
    assert state.engine is not None
    context = state.engine.max_model_len
    limits = state.settings
    max_prompt = min(limits.max_prompt_tokens or context, context)
    if prompt_len > max_prompt:
        raise ContextLengthExceededError(
            f"The prompt has {prompt_len} tokens, more than the limit of {max_prompt} tokens "
            f"(this model's maximum context length is {context} tokens). Shorten the prompt.",
            param=prompt_param,
        )
    room = context - prompt_len
    if requested == 0:  # scoring the prompt only (echo); the caller checked echo
        return 0
    if room < 1:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens, and the prompt has "
            f"{prompt_len} tokens, which leaves no room for a completion. Shorten the prompt.",
            param=prompt_param,
        )
    if requested is None:
        return min(room, limits.max_tokens_limit or room)
    if limits.max_tokens_limit is not None and requested > limits.max_tokens_limit:
        raise BadRequestError(
            f"max_tokens is {requested}, more than this server's limit of "
            f"{limits.max_tokens_limit}.",
            param="max_tokens",
        )
    if requested > room:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
            "completion). Please reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    return requested


def sampling_params(
    state: ServerState,
    req: SamplingFields,
    prompt_len: int,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_param: str = "prompt",
    prompt_logprobs: int | None = None,
    grammar: Grammar | None = None,
) -> SamplingParams:
    """The engine's SamplingParams for one prompt of `req` (400 on any invalid value)."""
    if req.n > state.settings.max_n:
        raise BadRequestError(
            f"n is {req.n}, more than this server's limit of {state.settings.max_n}.", param="n"
        )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return SamplingParams(
            n=req.n,
            max_tokens=resolve_max_tokens(state, max_tokens, prompt_len, prompt_param),
            min_tokens=req.min_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if req.top_k is None else req.top_k,
            seed=req.seed,
            stop=stop,
            stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            include_stop_str_in_output=req.include_stop_str_in_output,
            proxy_alpha=req.proxy_alpha,
            prompt_logprobs=prompt_logprobs,
            grammar=grammar,
            output_kind="cumulative" if req.stream else "final_only",
        )
    except ValueError as exc:
        raise BadRequestError(str(exc)) from exc
