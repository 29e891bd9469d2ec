"""Quiet saving: transformers' progress bars off while the demo writes its one-shard models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from transformers.utils import logging as hf_logging


@contextlib.contextmanager
def no_hf_progress_bars() -> Iterator[None]:
    """Progress bars off inside the block, restored after (if they were on)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
