"""Incremental detokenization (append_text) and stop-string search (find_stop)."""

from __future__ import annotations

import random

import pytest

from deltaserve.engine.detokenizer import append_text, find_stop
from deltaserve.engine.request import Request, Sequence
from deltaserve.engine.sampling_params import SamplingParams
from tests.tiny import EOS, make_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _seq() -> Sequence:
    req = Request("r", [1, 2, 3], SamplingParams(), 16)
    return Sequence(0, req, 0, seed=0)


def _stream(tok, ids: list[int]) -> tuple[Sequence, list[str]]:
    """Feed ids one at a time as the engine does; returns the sequence and every delta."""
    seq, deltas = _seq(), []
    for t in ids:
        seq.output_token_ids.append(t)
        deltas.append(append_text(tok, seq))
    return seq, deltas


TEXTS = [
    "plain ascii text",
    "héllo wörld — naïve café",
    "你好，世界！",
    "🎉🚀👍🏽🧪🎉",  # 4-byte characters (and a modifier) back to back across the 6-token window
    "mix: a€b𝄞c¢d 🎉 end",
    "\u00e9" * 9 + "z",
]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_equals_full_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode()), "the tiny tokenizer has one token per byte"
    seq, deltas = _stream(tok, ids)
    assert seq.text == text == tok.decode(ids, skip_special_tokens=True)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas), "a split character is never streamed half"


def test_multibyte_character_waits_for_its_last_byte(tok):
    ids = tok.encode("a🎉", add_special_tokens=False)  # 1 + 4 byte tokens
    _, deltas = _stream(tok, ids)
    assert deltas == ["a", "", "", "", "🎉"]


def test_random_utf8_streams(tok):
    rng = random.Random(0)
    alphabet = "ab z.é€你𝄞🎉\n"
    for _ in range(30):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        ids = tok.encode(text, add_special_tokens=False)
        seq, deltas = _stream(tok, ids)
        assert seq.text == text and "".join(deltas) == text


def test_special_tokens_are_skipped(tok):
    ids = tok.encode("ok", add_special_tokens=False) + [EOS]
    seq, deltas = _stream(tok, ids)
    assert seq.text == "ok" and deltas[-1] == ""


def test_invalid_byte_mid_stream_matches_full_decode(tok):
    ids = [0xFF] + tok.encode("ab", add_special_tokens=False)
    seq, _ = _stream(tok, ids)
    assert seq.text == tok.decode(ids, skip_special_tokens=True) == "\ufffdab"


# ---- find_stop ----------------------------------------------------------------------------

def test_stop_spanning_the_boundary():
    text = "hello world!"
    assert find_stop(text, 3, ["world"]) == (6, "world")  # "hello wor" + new "ld!"


def test_earliest_stop_wins():
    text = "abc END xyz STOP"
    assert find_stop(text, len(text), ["STOP", "END"]) == (4, "END")
    assert find_stop("xab", 1, ["b", "ab"]) == (1, "ab")


def test_stop_entirely_in_old_text_is_not_reported():
    assert find_stop("xxSTOPyy", 2, ["STOP"]) is None
    assert find_stop("xxSTOPyy", 3, ["STOP"]) == (2, "STOP")  # ends in the new "Pyy"


def test_no_stop_and_empty_new_text():
    assert find_stop("nothing here", 4, ["zzz"]) is None
    assert find_stop("STOP", 0, ["STOP"]) is None
    assert find_stop("STOP", 1, []) is None


def test_first_occurrence_inside_new_text():
    assert find_stop("a-b-", 4, ["-"]) == (1, "-")
