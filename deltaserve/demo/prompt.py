"""The demo's token ids and prompt format: the one place the server and README take them from.

The demo tokenizer is byte-level: token id `b` (0..255) is the byte `b`, and five special
tokens follow. A single-turn request is rendered as

    <s><|user|>\\n{text}\\n<|assistant|>\\n

and the model answers `{answer}</s>`. An optional system line goes between `<s>` and
`<|user|>` (`<s>upper\\n<|user|>...`); the base reads a task name there.

`demo_prompt` gives the same string without `<s>`, because a completion request's tokenizer
call adds BOS itself; the chat template writes `<s>` because chat rendering is tokenized
without special tokens (vLLM and transformers both do so).
"""

from __future__ import annotations

NUM_BYTES = 256
PAD, BOS, EOS, USER, ASSISTANT = "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"
# Order fixes the ids: <pad>=256, <s>=257, </s>=258, <|user|>=259, <|assistant|>=260.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, USER, ASSISTANT)
PAD_ID, BOS_ID, EOS_ID, USER_ID, ASSISTANT_ID = range(NUM_BYTES, NUM_BYTES + len(SPECIAL_TOKENS))
VOCAB_SIZE = NUM_BYTES + len(SPECIAL_TOKENS)
_NL = ord("\n")

# Jinja chat template (HF `chat_template`). A system message is written as a plain line where
# it stands, which for the usual [system, user] is where the base reads a task name from.
# Any other role renders the same way rather than failing.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "<|user|>\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}"
    "<|assistant|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% else %}"
    "{{ message['content'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def demo_prompt(text: str, system: str | None = None) -> str:
    """The completion prompt for one user turn `text`; the tokenizer prepends `<s>`.

    Equals the chat template's rendering of `[{"role": "system", "content": system},
    {"role": "user", "content": text}]` (no system message when `system` is None) with
    `add_generation_prompt=True`, minus the leading `<s>`.
    """
    head = f"{system}\n" if system is not None else ""
    return f"{head}{USER}\n{text}\n{ASSISTANT}\n"


def prompt_ids(text: str, system: str | None = None) -> list[int]:
    """Token ids of `<s>` + `demo_prompt(text, system)`, built without a tokenizer (the
    training hot path; the build checks they equal the tokenizer's)."""
    head = [*system.encode("utf-8"), _NL] if system is not None else []
    return [BOS_ID, *head, USER_ID, _NL, *text.encode("utf-8"), _NL, ASSISTANT_ID, _NL]


def answer_ids(answer: str) -> list[int]:
    """Token ids the model is trained to produce after the prompt: the answer's bytes, then EOS."""
    return [*answer.encode("utf-8"), EOS_ID]
