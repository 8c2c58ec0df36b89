"""Command-line flags declared once, as the fields of a command's dataclass.

Both halves of the project (the sharding job and the trainers) declare their settings this way: a
field made with `flag(...)` carries its default, help text, argparse group and validity check, and
from the dataclass come the parser (`build_parser`), the validation messages (`invalid_flags`) and
what a run saves (`dataclasses.asdict`). Adding a flag is one field; nothing repeats its name.

Booleans follow one rule: a default of False gives `--name`, True gives `--no-name`, None gives
both (`--name/--no-name`, argparse's BooleanOptionalAction: "auto" until the user picks).
The module imports only the standard library, so the contract package stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]


def flag(default: Any = None, help: str = "", *, check: Check | None = None, must: str = "",
         group: str = "", metavar: str | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field that is also a command-line flag; `check(value)` False reads "must be `must`"."""
    meta = {"help": help, "check": check, "must": must, "group": group, "metavar": metavar, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type argparse converts to, whether None is allowed) for `int`, `int | None`, `tuple[float, float]`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return inner[0], len(inner) < len(args)
    return hint, False


def build_parser(cls: type, description: str) -> argparse.ArgumentParser:
    """An ArgumentParser whose flags, defaults and help are `cls`'s `flag` fields, in declaration order."""
    parser = argparse.ArgumentParser(description=description)
    groups: dict[str, Any] = {"": parser}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        meta = field.metadata
        target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind, optional = _base_type(hints[field.name])
        name, kwargs = flag_name(field.name), {"dest": field.name, "help": meta["help"]}
        if kind is bool and optional:
            target.add_argument(name, action=argparse.BooleanOptionalAction, default=field.default, **kwargs)
        elif kind is bool:
            negated = "--no-" + name[2:] if field.default else name
            target.add_argument(negated, action="store_false" if field.default else "store_true", **kwargs)
        else:
            if typing.get_origin(kind) is tuple:
                kwargs["nargs"] = len(typing.get_args(kind))
                kind = typing.get_args(kind)[0]
            target.add_argument(name, type=kind, default=field.default, metavar=meta["metavar"], **kwargs)
    return parser


def _has_type(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is tuple:
        parts = typing.get_args(kind)
        return isinstance(value, (tuple, list)) and len(value) == len(parts) and all(
            _has_type(v, parts[0]) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def invalid_flags(config: Any) -> list[str]:
    """One message per flag whose value fails its type, choices or check, e.g.
    "invalid value for --workers 0: must be > 0".

    Types and choices are checked here, not only by argparse, so that a config built in code or read
    from a YAML file gets the same answer as the command line.
    """
    problems = []
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        if "help" not in field.metadata:
            continue
        meta, value = field.metadata, getattr(config, field.name)
        kind, optional = _base_type(hints[field.name])
        shown = " ".join(map(str, value)) if isinstance(value, (tuple, list)) else value
        prefix = f"invalid value for {flag_name(field.name)} {shown}: must be"
        if value is None and optional:
            continue
        if not _has_type(value, kind):
            problems.append(f"{prefix} of type {kind.__name__ if isinstance(kind, type) else kind}")
        elif meta["choices"] is not None and value not in meta["choices"]:
            problems.append(f"{prefix} one of {', '.join(meta['choices'])}")
        elif meta["check"] is not None and not meta["check"](value):
            problems.append(f"{prefix} {meta['must']}")
    return problems
