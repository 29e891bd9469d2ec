"""The `deltaserve` command: `serve`, `demo`, `compress` and `mix fit`, one module each."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deltaserve.entrypoints.cli import compress, demo, mix, serve
from deltaserve.entrypoints.cli.parser import Subcommand, parser_for, settings_from

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main"]

SUBCOMMANDS: dict[str, Subcommand] = {
    "serve": serve.COMMAND,
    "demo": demo.COMMAND,
    "compress": compress.COMMAND,
    "mix fit": mix.FIT,
}
"""Subcommands by name; "mix fit" is `deltaserve mix fit`."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    return parser_for(SUBCOMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `deltaserve` console script (and `python -m deltaserve`)."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    sub = SUBCOMMANDS[args["_name"]]
    values = {k: v for k, v in args.items() if k != "command" and not k.startswith("_")}
    return sub.run(settings_from(sub, values, args["_subparser"]))


if __name__ == "__main__":
    sys.exit(main())
