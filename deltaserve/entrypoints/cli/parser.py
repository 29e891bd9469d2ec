"""The `deltaserve` argument parser, generated from the subcommands' settings classes.

Each subcommand is a settings class plus a function. Its flags are generated from the settings
fields (`max_num_seqs` → `--max-num-seqs`, help = the field's description), so a flag, its
environment variable (`DELTASERVE_MAX_NUM_SEQS`) and its documentation never drift apart.
A flag given on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

ENV_PREFIX = "DELTASERVE_"


@dataclass(frozen=True)
class Subcommand:
    """One `deltaserve <name>`: its help line, settings class and what it runs."""

    help: str
    settings: type[BaseSettings]
    run: Callable[[Any], int]


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


def parser_for(subcommands: Mapping[str, Subcommand]) -> argparse.ArgumentParser:
    """The full argument parser, one subparser per subcommand ("mix fit" → `mix` → `fit`)."""
    parser = argparse.ArgumentParser(
        prog="deltaserve",
        description="Multi-tenant adapter inference server. Every flag can also be set with an "
        f"environment variable {ENV_PREFIX}<FLAG> (flags win).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, sub in subcommands.items():
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


def settings_from(sub: Subcommand, values: dict[str, Any], parser: argparse.ArgumentParser) -> Any:
    """The subcommand's settings from the parsed flags; a bad value exits naming flag and env."""
    try:
        return sub.settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            flag = "--" + field.replace("_", "-")
            problems.append(f"{flag} (env {ENV_PREFIX}{field.upper()}): {err['msg']}")
        parser.error("; ".join(problems))
