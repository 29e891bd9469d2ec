"""Our SamplingParams → vLLM's, and vLLM's cumulative RequestOutputs → ours."""

from __future__ import annotations

from vllm import SamplingParams as VllmSamplingParams
from vllm.outputs import CompletionOutput as VllmCompletion
from vllm.outputs import RequestOutput as VllmRequestOutput
from vllm.sampling_params import RequestOutputKind

from deltaserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from deltaserve.engine.sampling_params import SamplingParams

OUTPUT_KINDS = {"cumulative": RequestOutputKind.CUMULATIVE, "final_only": RequestOutputKind.FINAL_ONLY}

SEED_MODULUS = 1 << 63
"""vLLM seeds torch generators with int64 (and reads -1 as "no seed"): fold ours into [0, 2⁶³)."""


def vllm_sampling_params(p: SamplingParams) -> VllmSamplingParams:
    """The same sampling in vLLM's terms (top_k: vLLM disables with 0, we with -1).

    max_tokens 0 (score the prompt only) is not a vLLM value: one token is generated and
    dropped by the OutputConverter.
    """
    return VllmSamplingParams(
        n=p.n,
        max_tokens=p.max_tokens or (1 if p.max_tokens == 0 else None),
        prompt_logprobs=p.prompt_logprobs,
        min_tokens=p.min_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=max(p.top_k, 0),
        seed=None if p.seed is None else p.seed % SEED_MODULUS,
        stop=list(p.stop) or None,
        stop_token_ids=list(p.stop_token_ids) or None,
        ignore_eos=p.ignore_eos,
        logprobs=p.logprobs,
        include_stop_str_in_output=p.include_stop_str_in_output,
        output_kind=OUTPUT_KINDS[p.output_kind],
    )


class OutputConverter:
    """Converts one request's outputs; logprobs already converted are kept, not redone."""

    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams, arrival: float,
                 adapter: str | None):  # fmt: skip
        self.request_id = request_id
        self.prompt = prompt
        self.top_k = params.logprobs
        self.prompt_k = params.prompt_logprobs
        self.score_only = params.max_tokens == 0
        self.prompt_logprobs: list[TokenLogprob | None] | None = None
        self.metrics = RequestMetrics(arrival_time=arrival)
        self.adapter = adapter
        self._samples: dict[int, CompletionOutput] = {}

    def convert(self, out: VllmRequestOutput, now: float) -> RequestOutput:
        for c in out.outputs:
            self._samples[c.index] = self._completion(c)
        if self.prompt_k is not None and self.prompt_logprobs is None and out.prompt_logprobs:
            self.prompt_logprobs = [
                None if pos is None else self._token_logprob(tid, pos, self.prompt_k)
                for tid, pos in zip(self.prompt, out.prompt_logprobs, strict=False)
            ]
        if self.metrics.first_token_time is None and any(
            s.token_ids for s in self._samples.values()
        ):
            self.metrics.first_token_time = now
        if out.finished:
            self.metrics.finished_time = now
        samples = [self._samples[i] for i in sorted(self._samples)]
        return RequestOutput(
            self.request_id, self.prompt, samples, out.finished, self.metrics, self.adapter,
            prompt_logprobs=self.prompt_logprobs,
        )

    def _completion(self, c: VllmCompletion) -> CompletionOutput:
        if self.score_only:
            return CompletionOutput(c.index, "", [], [] if self.top_k is not None else None,
                                    finish_reason=c.finish_reason and "length")  # fmt: skip
        token_ids = list(c.token_ids)
        logprobs = None
        if self.top_k is not None:
            done = self._samples.get(c.index)
            logprobs = list(done.logprobs or []) if done is not None else []
            for pos in range(len(logprobs), min(len(token_ids), len(c.logprobs or []))):
                logprobs.append(self._token_logprob(token_ids[pos], c.logprobs[pos], self.top_k))
        return CompletionOutput(
            index=c.index, text=c.text, token_ids=token_ids, logprobs=logprobs,
            finish_reason=c.finish_reason, stop_reason=c.stop_reason,
        )  # fmt: skip

    @staticmethod
    def _token_logprob(token_id: int, position, k: int) -> TokenLogprob:
        """position: {token_id: Logprob(logprob, rank)}: the top-k plus the chosen token."""
        ranked = sorted(
            ((lp.rank or 0, tid, lp.logprob) for tid, lp in position.items()),
            key=lambda r: r[0],
        )
        top = [(tid, lp) for rank, tid, lp in ranked if 1 <= rank <= k]
        chosen = position.get(token_id)
        return TokenLogprob(token_id, float(chosen.logprob) if chosen else float("nan"), top)
