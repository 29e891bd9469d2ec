"""When a sample stops: stop tokens, EOS, stop strings, max_tokens and the context length."""

from __future__ import annotations

from deltaserve.engine.detokenizer import append_text, find_stop, flush_text
from deltaserve.engine.request import SeqStatus, Sequence


def check_stop(seq: Sequence, tokenizer, eos_token_ids: set[int], max_model_len: int) -> None:
    """Detokenize seq's newest token and finish seq if it ends the sample."""
    p, tok = seq.params, seq.output_token_ids[-1]
    new = append_text(tokenizer, seq)
    n_out = len(seq.output_token_ids)
    if n_out >= p.min_tokens:
        if tok in p.stop_token_ids:
            return stop(seq, tokenizer, "stop", tok)
        if not p.ignore_eos and tok in eos_token_ids:
            return stop(seq, tokenizer, "stop", None)
        if p.stop and new:
            hit = find_stop(seq.text, len(new), p.stop)
            if hit is not None:
                idx, s = hit
                seq.text = seq.text[: idx + len(s)] if p.include_stop_str_in_output else seq.text[:idx]
                return stop(seq, tokenizer, "stop", s)
    if n_out >= seq.request.max_tokens or seq.num_tokens >= max_model_len:
        stop(seq, tokenizer, "length", None)


def stop(seq: Sequence, tokenizer, reason: str, stop_reason) -> None:
    if not isinstance(stop_reason, str):  # a stop string already cut the text
        flush_text(tokenizer, seq)
    seq.finish_reason, seq.stop_reason = reason, stop_reason
    seq.status = SeqStatus.FINISHED
