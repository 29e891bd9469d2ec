"""Incremental detokenization and stop-string matching for one sequence.

Decoding only a short window (prefix_offset..end) per new token keeps the cost per token
constant; text that ends in an incomplete UTF-8 sequence (U+FFFD) waits for the next token.
"""

from __future__ import annotations

from deltaserve.engine.request import Sequence

_WINDOW = 6  # tokens of left context so merges across the boundary decode correctly


def append_text(tokenizer, seq: Sequence) -> str:
    """Decode the newest output token into seq.text; returns the new text (may be '')."""
    ids = seq.output_token_ids
    if seq.read_offset == 0 and seq.prefix_offset == 0 and len(ids) == 1:
        seq.prefix_offset = 0
    prefix = tokenizer.decode(ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=True)
    full = tokenizer.decode(ids[seq.prefix_offset :], skip_special_tokens=True)
    if full.endswith("\ufffd") or len(full) <= len(prefix):
        return ""
    new = full[len(prefix) :]
    seq.text += new
    seq.read_offset = len(ids)
    seq.prefix_offset = max(0, len(ids) - _WINDOW)
    return new


def find_stop(text: str, new_len: int, stops: list[str]) -> tuple[int, str] | None:
    """Earliest stop string that ends inside the new text: (start index in text, the string)."""
    best = None
    for s in stops:
        # Only search where a match could involve the new characters.
        start = max(0, len(text) - new_len - len(s) + 1)
        i = text.find(s, start)
        if i != -1 and (best is None or i < best[0]):
            best = (i, s)
    return best


def flush_text(tokenizer, seq: Sequence) -> None:
    """At the end of a sequence, append text held back for an incomplete UTF-8 sequence."""
    ids = seq.output_token_ids
    if seq.read_offset >= len(ids):
        return
    prefix = tokenizer.decode(ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=True)
    full = tokenizer.decode(ids[seq.prefix_offset :], skip_special_tokens=True)
    seq.text += full[len(prefix) :]
    seq.read_offset = len(ids)
