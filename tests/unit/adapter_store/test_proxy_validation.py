"""Store-side checks of proxy adapters: paths, alpha, vocabulary size and tokenizer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from deltaserve.adapter_store.errors import InvalidAdapterError
from deltaserve.adapter_store.validation import Limits, validate_adapter_dir
from tests.unit.adapter_store.helpers import SHAPES

SHAPES_V = replace(SHAPES, vocab_size=100)


def _model(d: Path, vocab: int = 100, tokens: dict | None = None) -> None:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab}))
    if tokens is not None:
        (d / "tokenizer.json").write_text(json.dumps({"model": {"vocab": tokens}}))


def _proxy(root: Path, **cfg) -> Path:
    (root / "deltaserve_adapter.json").write_text(json.dumps(
        {"kind": "proxy", "expert": "expert", "anti_expert": "anti", **cfg}))
    return root


def _sha(tokens: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(sorted(tokens.items())).encode()).hexdigest()


def test_valid_proxy(tmp_path: Path) -> None:
    _model(tmp_path / "anti", tokens={"a": 0})
    _model(tmp_path / "expert")
    limits = Limits(base_tokenizer_sha256=_sha({"a": 0}))
    assert validate_adapter_dir(_proxy(tmp_path), SHAPES_V, limits).kind == "proxy"


def test_vocab_size_mismatch_refused(tmp_path: Path) -> None:
    _model(tmp_path / "anti")
    _model(tmp_path / "expert", vocab=101)
    with pytest.raises(InvalidAdapterError, match="vocab_size 101") as e:
        validate_adapter_dir(_proxy(tmp_path), SHAPES_V, Limits())
    assert e.value.status == 422


def test_tokenizer_mismatch_refused(tmp_path: Path) -> None:
    _model(tmp_path / "anti", tokens={"a": 0, "b": 1})
    _model(tmp_path / "expert")
    with pytest.raises(InvalidAdapterError, match="different tokenizer"):
        validate_adapter_dir(_proxy(tmp_path), SHAPES_V,
                             Limits(base_tokenizer_sha256=_sha({"a": 0})))


def test_bad_alpha_and_escaping_path_refused(tmp_path: Path) -> None:
    _model(tmp_path / "anti")
    _model(tmp_path / "expert")
    with pytest.raises(InvalidAdapterError, match="alpha"):
        validate_adapter_dir(_proxy(tmp_path, alpha="x"), SHAPES_V, Limits())
    with pytest.raises(InvalidAdapterError, match="inside"):
        validate_adapter_dir(_proxy(tmp_path, expert="../x"), SHAPES_V, Limits())
