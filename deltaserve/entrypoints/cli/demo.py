"""`deltaserve demo`: build the demo base model and its adapters."""

from __future__ import annotations

import logging

from deltaserve.entrypoints.cli.parser import Subcommand
from deltaserve.entrypoints.settings import DemoSettings


def run_demo(settings: DemoSettings) -> int:
    """`deltaserve demo`: build the demo model and adapters."""
    from deltaserve.demo import build

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build(settings.out, progress=True)
    print(path)
    return 0


COMMAND = Subcommand("Build the demo base model and adapters.", DemoSettings, run_demo)
