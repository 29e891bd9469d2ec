"""The demo's byte-level tokenizer: id b is byte b, so any text round-trips exactly."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from deltaserve.demo.prompt import (
    BOS,
    BOS_ID,
    CHAT_TEMPLATE,
    EOS,
    NUM_BYTES,
    PAD,
    SPECIAL_TOKENS,
)

MODEL_MAX_LENGTH = 512


def _byte_alphabet() -> list[str]:
    """GPT-2's byte → printable-character table, indexed by byte value.

    The ByteLevel pre-tokenizer rewrites every input byte as this character, so a BPE vocab
    holding exactly these 256 characters (and no merges) gives one token per byte.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(NUM_BYTES):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(NUM_BYTES + extra)
            extra += 1
    return [table[b] for b in range(NUM_BYTES)]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` with ids 0..255 = bytes and 256.. = `SPECIAL_TOKENS`."""
    vocab = {ch: b for b, ch in enumerate(_byte_alphabet())}
    vocab.update({tok: NUM_BYTES + i for i, tok in enumerate(SPECIAL_TOKENS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split and no prefix space: the text is mapped byte for byte, spaces included.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # Completion-style encoding prepends <s>, like Llama tokenizers do.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json (chat template inside the config).

    The legacy layout (template in tokenizer_config.json, no chat_template.jinja) is read by
    both transformers 4.x and 5.x; the class name is the one both know.
    """
    tokenizer.save_pretrained(str(directory), save_jinja_files=False)
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    # transformers 5 writes the list as `extra_special_tokens`, which 4.x reads as a dict.
    extra = cfg.pop("extra_special_tokens", None) or list(SPECIAL_TOKENS[3:])
    cfg["additional_special_tokens"] = extra
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
