"""Turning the engine's cumulative outputs into stream deltas.

The engine reports each sample's whole text and tokens after every step. A stream sends only
what is new, but holds back text that may still change: the tail that could be the start of a
stop string (it is cut from the final text if the stop string completes) and a trailing
incomplete UTF-8 character (U+FFFD). So the concatenated deltas equal the final text exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltaserve.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from deltaserve.engine.sampling_params import SamplingParams
from deltaserve.entrypoints.openai.protocol import PromptTokensDetails, UsageInfo


def holdback_chars(params: SamplingParams) -> int:
    """Characters at the end of unfinished text that a stop string could still claim."""
    if params.include_stop_str_in_output or not params.stop:
        return 0
    return max(len(s) for s in params.stop) - 1


@dataclass
class Delta:
    """What is new in one sample since the last delta."""

    text: str
    logprobs: list[TokenLogprob] | None
    """Logprobs of the tokens not sent before (None when not requested)."""
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class DeltaTracker:
    """Per-sample progress of a stream."""

    holdback: int = 0
    sent_chars: int = 0
    sent_tokens: int = 0
    done: bool = False

    def take(self, out: CompletionOutput) -> Delta | None:
        """The delta to send now, or None when no token arrived since the last one.

        A token whose text is held back (a possible stop string, an incomplete UTF-8 character)
        or empty (a special token) still gets its delta, with empty text, as vLLM streams it:
        clients time tokens by chunks, and a stream must not fall silent while tokens arrive.
        """
        if self.done:
            return None
        text = out.text
        if out.finished:
            end = len(text)
        else:
            end = max(self.sent_chars, len(text) - self.holdback)
            while end > self.sent_chars and text[end - 1] == "\ufffd":
                end -= 1
        if end <= self.sent_chars and len(out.token_ids) <= self.sent_tokens and not out.finished:
            return None
        delta_text = text[self.sent_chars : end]
        new_ids = out.token_ids[self.sent_tokens :]
        logprobs = None if out.logprobs is None else out.logprobs[self.sent_tokens :]
        self.sent_chars = end
        self.sent_tokens = len(out.token_ids)
        self.done = out.finished
        return Delta(delta_text, logprobs, list(new_ids), out.finish_reason)


def public_finish_reason(reason: str | None) -> str | None:
    """OpenAI knows 'stop' and 'length'; an aborted sample is reported as stopped."""
    if reason is None or reason == "length":
        return reason
    return "stop"


def usage_of(outputs: list[RequestOutput | None]) -> UsageInfo:
    """Token counts over all prompts of a request (prompt counted once, every sample counted)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs if o is not None)
    completion = sum(len(c.token_ids) for o in outputs if o is not None for c in o.outputs)
    cached = sum(getattr(o, "num_cached_tokens", 0) for o in outputs if o is not None)
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )
