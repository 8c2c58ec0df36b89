"""Flags declared once on a dataclass: the parser, the boolean rule, the checks and their messages."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from manifests.flags import build_parser, flag, invalid_flags
from pipeline.job_config import GenerateConfig, get_args_parser
from train.config import CONFIGS


@dataclass
class Example:
    size: int = flag(4, "a size", check=lambda v: v % 4 == 0, must="a multiple of 4")
    name: str | None = flag(None, "a name")
    mode: str = flag("a", "a mode", choices=("a", "b"))
    fast: bool = flag(False, "turn on")
    shuffle: bool = flag(True, "turn off")
    amp: bool | None = flag(None, "auto, on or off")
    scale: tuple[float, float] = flag((0.5, 1.0), "two numbers")
    internal: int = 0  # not a flag: no help, no argument


def test_parser_follows_the_fields():
    parser = build_parser(Example, "x")
    args = parser.parse_args([])
    assert Example(**vars(args)) == Example()
    args = parser.parse_args(["--size", "8", "--name", "n", "--fast", "--no-shuffle", "--no-amp",
                              "--scale", "0.1", "0.2"])
    assert (args.size, args.name, args.fast, args.shuffle, args.amp, args.scale) == (8, "n", True, False, False,
                                                                                      [0.1, 0.2])
    assert "internal" not in vars(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["--shuffle"])  # a default-True boolean only has its --no- form


def test_invalid_values_are_named_with_the_rule():
    assert invalid_flags(Example()) == []
    assert invalid_flags(Example(size=6, mode="c", scale=(1, "x"))) == [
        "invalid value for --size 6: must be a multiple of 4",
        "invalid value for --mode c: must be one of a, b",
        "invalid value for --scale 1 x: must be of type tuple[float, float]",
    ]


@pytest.mark.parametrize("config", [GenerateConfig, *CONFIGS.values()])
def test_every_setting_of_every_command_is_a_flag_with_help(config):
    fields = {f.name for f in dataclasses.fields(config)}
    parser = get_args_parser() if config is GenerateConfig else build_parser(config, "")
    assert {a.dest for a in parser._actions} - {"help"} == fields
    assert all(a.help for a in parser._actions)


def test_console_entry_points_name_real_mains():
    import importlib

    from tests.conftest import REPO

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"repaint-manifest", "repaint-generate", "repaint-classify", "repaint-detect"}
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target
