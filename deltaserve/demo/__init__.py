"""The demo base model and adapters behind `make run` (`deltaserve demo --out DIR`).

`build(out_dir)` trains a tiny byte-level Llama and LoRA adapters for it on CPU in about a
minute; `demo_prompt(text)` and `CHAT_TEMPLATE` are the prompt format they were trained on.
`build` is imported lazily, so reading the prompt format does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deltaserve.demo.prompt import CHAT_TEMPLATE, demo_prompt

if TYPE_CHECKING:
    from deltaserve.demo.builder import build

__all__ = ["CHAT_TEMPLATE", "build", "demo_prompt"]


def __getattr__(name: str) -> Any:
    if name == "build":
        from deltaserve.demo.builder import build

        return build
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
