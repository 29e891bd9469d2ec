"""Structured outputs: grammars compiled by xgrammar, enforced as a per-row token bitmask.

A request's grammar (JSON schema, any JSON, regex, a choice of strings or an EBNF grammar) is
compiled once per distinct spec (LRU cache keyed by the spec's sha256) into an xgrammar
CompiledGrammar shared by every request that asks for it. Each constrained sample gets its own
GrammarMatcher. Per step, the rows with a grammar fill one CPU bitmask [B, ceil(V/32)]
(int32, a 1 bit = allowed), which is copied to the device once and applied to those rows'
logits before sampling; rows without a grammar are not touched, and steps without any
constrained row skip all of this. xgrammar is imported on first use only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch

from deltaserve.engine.request import Sequence

logger = logging.getLogger(__name__)

GrammarKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


class GrammarError(ValueError):
    """The spec cannot be compiled (invalid schema, regex or grammar)."""


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must follow. `value`: the JSON schema (a JSON string), the regex, the
    EBNF grammar, or the choices as a JSON list of strings; unused for json_object."""

    kind: GrammarKind
    value: str = ""

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.kind}\0{self.value}".encode()).hexdigest()


@dataclass(eq=False)
class Grammar:
    """A compiled grammar, shared by every request with the same spec."""

    key: str
    compiled: Any
    """xgrammar.CompiledGrammar."""


def _xgr():
    import xgrammar  # noqa: PLC0415 - loaded only when structured outputs are used

    return xgrammar


class GrammarCompiler:
    """Compiles specs for one tokenizer/vocabulary; thread-safe; an LRU of compiled grammars."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int],
                 cache_size: int = 256):
        self._tokenizer, self._vocab, self._stops = tokenizer, vocab_size, list(stop_token_ids)
        self._compiler: Any = None
        self._cache: OrderedDict[str, Grammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def load(self) -> Any:
        """Import xgrammar and index the vocabulary (once; seconds for large vocabularies)."""
        with self._lock:
            if self._compiler is None:
                xgr = _xgr()
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab, stop_token_ids=self._stops)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compiler

    def cached(self, spec: GrammarSpec) -> Grammar | None:
        with self._lock:
            g = self._cache.get(spec.key)
            if g is not None:
                self._cache.move_to_end(spec.key)
            return g

    def compile(self, spec: GrammarSpec) -> Grammar:
        """The compiled grammar for `spec` (from the cache when seen before); GrammarError."""
        g = self.cached(spec)
        if g is not None:
            return g
        compiler = self.load()
        try:
            compiled = _compile(compiler, spec)
        except (RuntimeError, ValueError, TypeError) as e:  # xgrammar's errors subclass these
            raise GrammarError(str(e).strip().splitlines()[0] if str(e).strip() else
                               type(e).__name__) from None
        g = Grammar(spec.key, compiled)
        with self._lock:
            self._cache[spec.key] = g
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return g


def _compile(compiler: Any, spec: GrammarSpec) -> Any:
    if spec.kind == "json_schema":
        # compact JSON (no free whitespace): a model cannot pad the output indefinitely
        return compiler.compile_json_schema(spec.value, any_whitespace=False, strict_mode=True)
    if spec.kind == "json_object":  # OpenAI's JSON mode: any JSON object
        return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False,
                                            strict_mode=False)
    if spec.kind == "regex":
        return compiler.compile_regex(spec.value)
    if spec.kind == "choice":
        choices = json.loads(spec.value)
        # EBNF string literals use JSON's escapes
        return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in choices))
    return compiler.compile_grammar(spec.value)


def apply_bitmask(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Mask (in place) the logits [B, V] of rows whose sample follows a grammar."""
    rows = [i for i, s in enumerate(seqs) if s.params.grammar is not None]
    if not rows:
        return
    xgr = _xgr()
    mask = xgr.allocate_token_bitmask(len(seqs), logits.shape[1])  # [B, ceil(V/32)] int32
    for i in rows:
        seq = seqs[i]
        if seq.matcher is None:
            seq.matcher = xgr.GrammarMatcher(seq.params.grammar.compiled)
        seq.matcher.fill_next_token_bitmask(mask, i)
    xgr.apply_token_bitmask_inplace(logits, mask.to(logits.device, non_blocking=True),
                                    indices=rows)


def advance(seq: Sequence, token_id: int) -> bool:
    """Feed a sampled token to seq's matcher; True when the grammar is complete (stop now)."""
    m = seq.matcher
    if m is None:
        return False
    if not m.accept_token(token_id):  # cannot happen for a masked sample; end it cleanly
        logger.warning("grammar rejected token %d of sequence %d", token_id, seq.seq_id)
        return True
    return m.is_terminated()
