"""Tokenizer loading (transformers), offline: the model directory must carry its tokenizer."""

from __future__ import annotations

from transformers import AutoTokenizer


def load_tokenizer(model_dir: str):
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:
        raise ValueError(f"cannot load a tokenizer from {model_dir!r}: {e}") from None
