"""From request prompts and chat messages to token ids.

Completions: a string is tokenized with the tokenizer's special tokens (BOS as the model
expects); token ids are used exactly as given. Chat: messages are rendered with the tokenizer's
chat template (a plain default when it has none), then tokenized without adding special tokens
again — the template already places them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from deltaserve.entrypoints.errors import BadRequestError

logger = logging.getLogger(__name__)

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""Used when the tokenizer has no chat template: role-tagged turns, then the assistant tag."""


@dataclass
class PromptInput:
    """One prompt ready for the engine."""

    token_ids: list[int]
    text: str | None = None
    """The prompt as text when the caller sent text (used for `echo`)."""


def _check_token_ids(ids: list[int], vocab_size: int, index: int) -> None:
    if not ids:
        raise BadRequestError(f"prompt {index} is empty.", param="prompt")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise BadRequestError(
            f"Token id {bad} in prompt {index} is out of vocabulary (0..{vocab_size - 1}).",
            param="prompt",
        )


def vocab_size(tokenizer: Any) -> int:
    """Number of token ids the tokenizer can produce (added tokens included)."""
    return len(tokenizer)


def completion_prompts(
    tokenizer: Any, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[PromptInput]:
    """Normalise an OpenAI `prompt` to one PromptInput per prompt."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise BadRequestError("prompt must not be empty.", param="prompt")
    size = vocab_size(tokenizer)
    inputs = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = list(tokenizer.encode(item))
            if not ids:
                raise BadRequestError(f"prompt {i} is empty.", param="prompt")
            inputs.append(PromptInput(token_ids=ids, text=item))
        else:
            ids = [int(t) for t in item]
            _check_token_ids(ids, size, i)
            inputs.append(PromptInput(token_ids=ids))
    return inputs


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """A chat message's content as text; only text parts are supported."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise BadRequestError(
                f"Content parts of type {part.get('type')!r} are not supported; only 'text'.",
                param="messages",
            )
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def chat_prompt(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True
) -> PromptInput:
    """Render messages with the chat template and tokenize the result."""
    template = None if getattr(tokenizer, "chat_template", None) else DEFAULT_CHAT_TEMPLATE
    try:
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
    except Exception as exc:  # jinja raises its own types (e.g. "roles must alternate")
        logger.info("chat template rejected the messages: %s", exc)
        raise BadRequestError(
            f"The chat template rejected the messages: {exc}", param="messages"
        ) from exc
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise BadRequestError("The rendered chat prompt is empty.", param="messages")
    return PromptInput(token_ids=ids, text=text)
