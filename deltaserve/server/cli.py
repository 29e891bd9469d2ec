"""The `deltaserve` command: `serve`, `demo` (and later `compress`, `mix`).

Each subcommand is a settings class plus a function. Its flags are generated from the settings
fields (`max_num_seqs` → `--max-num-seqs`, help = the field's description), so a flag, its
environment variable (`DELTASERVE_MAX_NUM_SEQS`) and its documentation never drift apart.
A flag given on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from deltaserve.server.settings import CompressSettings, DemoSettings, MixFitSettings, Settings

logger = logging.getLogger(__name__)

ENV_PREFIX = "DELTASERVE_"


@dataclass(frozen=True)
class Subcommand:
    """One `deltaserve <name>`: its help line, settings class and what it runs."""

    help: str
    settings: type[BaseSettings]
    run: Callable[[Any], int]


SUBCOMMANDS: dict[str, Subcommand] = {}
"""Registered subcommands by name; `register` adds more (compress, mix)."""


def register(name: str, subcommand: Subcommand) -> None:
    """Make `deltaserve <name>` available."""
    SUBCOMMANDS[name] = subcommand


def _strip_optional(annotation: Any) -> Any:
    """`X | None` → X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _add_field(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    """One `--flag` for a settings field; absent flags stay absent (env/default then apply)."""
    flag = "--" + name.replace("_", "-")
    env = ENV_PREFIX + name.upper()
    if field.is_required():
        default = "required"
    else:
        value = field.get_default(call_default_factory=True)
        default = "default: " + ("unset" if value in (None, []) else str(value))
    kwargs: dict[str, Any] = {
        "dest": name,
        "default": argparse.SUPPRESS,
        "help": f"{field.description or ''} [env {env}; {default}]".replace("%", "%%"),
    }
    annotation = _strip_optional(field.annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        kwargs["choices"] = [str(c) for c in typing.get_args(annotation)]
    elif origin is list:
        kwargs.update(nargs="+", action="extend")
    elif annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif annotation in (int, float):
        kwargs["type"] = annotation
    kwargs["metavar"] = _metavar(name, field, annotation)
    if (
        kwargs["metavar"] is None
        or "choices" in kwargs
        or "action" in kwargs
        and annotation is bool
    ):
        kwargs.pop("metavar")
    parser.add_argument(flag, **kwargs)


def _metavar(name: str, field: FieldInfo, annotation: Any) -> str | None:
    """DIR, FILE, N, ... : what the flag's value is, for --help."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("metavar"), str):
        return extra["metavar"]
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if annotation is Path:
        return "DIR" if name.endswith(("dir", "root", "out")) else "FILE"
    if annotation is int:
        return "N"
    if annotation is float:
        return "SECONDS" if name.endswith("_s") else "X"
    return None


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one subparser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="deltaserve",
        description="Multi-tenant adapter inference server. Every flag can also be set with an "
        f"environment variable {ENV_PREFIX}<FLAG> (flags win).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, sub in SUBCOMMANDS.items():
        group, _, leaf = name.partition(" ")  # "mix fit" → `deltaserve mix fit`
        where = subparsers
        if leaf:
            if group not in groups:
                gp = subparsers.add_parser(group, help=f"{group} subcommands")
                groups[group] = gp.add_subparsers(dest="_" + group, required=True, metavar="ACTION")
            where = groups[group]
        sp = where.add_parser(leaf or name, help=sub.help, description=sub.help)
        sp.set_defaults(_subparser=sp, _name=name)
        for field_name, field in sub.settings.model_fields.items():
            _add_field(sp, field_name, field)
    return parser


def _settings_from(sub: Subcommand, values: dict[str, Any], parser: argparse.ArgumentParser) -> Any:
    try:
        return sub.settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            flag = "--" + field.replace("_", "-")
            problems.append(f"{flag} (env {ENV_PREFIX}{field.upper()}): {err['msg']}")
        parser.error("; ".join(problems))


def run_serve(settings: Settings) -> int:
    """`deltaserve serve`: run the HTTP server until SIGTERM/SIGINT, then drain and exit."""
    import uvicorn

    from deltaserve.server.app import (
        CUT_GRACE_S,
        create_app,
        install_reload_signal,
        start_draining,
    )

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except (OSError, ValueError, KeyError) as exc:  # e.g. an unreadable or invalid --api-keys file
        print(f"deltaserve serve: error: {exc}", file=sys.stderr)
        return 2

    class DrainingServer(uvicorn.Server):
        """On a shutdown signal, first mark the app draining (new requests get 503)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            start_draining(app)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn's own deadline comes after ours, so requests are cut cleanly by the app.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s + CUT_GRACE_S + 1),
    )
    install_reload_signal(app)
    DrainingServer(config).run()
    return 0


def run_demo(settings: DemoSettings) -> int:
    """`deltaserve demo`: build the demo model and adapters."""
    from deltaserve.demo import build

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build(settings.out, progress=True)
    print(path)
    return 0


register(
    "serve", Subcommand("Serve the base model and its adapters over HTTP.", Settings, run_serve)
)
register("demo", Subcommand("Build the demo base model and adapters.", DemoSettings, run_demo))


def run_compress(settings: CompressSettings) -> int:
    """`deltaserve compress`: write a sparse_delta adapter from a full fine-tune."""
    from deltaserve.server.compress_cli import compress_cmd

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return compress_cmd(settings)


register("compress", Subcommand(
    "Compress a full fine-tune into a sparse_delta adapter (DARE, DAREx-q or magnitude pruning).",
    CompressSettings, run_compress,
))


def run_mix_fit(settings: MixFitSettings) -> int:
    """`deltaserve mix fit`: fit a mix's routing on examples and write the `mix` adapter."""
    from deltaserve.server.mix_cli import mix_fit

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return mix_fit(settings)


register(
    "mix fit",
    Subcommand(
        "Learn a mix's routing (MHR-z: only the routing logits, the inventory frozen) from "
        "prompt/completion examples and write a `mix` adapter.", MixFitSettings, run_mix_fit,
    ),
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `deltaserve` console script."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    sub = SUBCOMMANDS[args["_name"]]
    values = {k: v for k, v in args.items() if k != "command" and not k.startswith("_")}
    return sub.run(_settings_from(sub, values, args["_subparser"]))


if __name__ == "__main__":
    sys.exit(main())
