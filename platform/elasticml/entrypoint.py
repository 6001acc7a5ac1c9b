"""How every command-line entry point ends: one map from what happened to an exit status.

Every entry point (`elasticml`, `python -m elasticml.scheduler.replay` and `.simulate`,
`jobs/train.py`, `jobs/tune.py`, `jobs/distill.py`, `python -m elasticml.provision.tls`) is a click
command run through `run`:

    what happened                     what the user sees                            exit
    returned normally                 the command's output                          0, or the int it returned
    ElasticMLError (ConfigError...)   `PROG: error: MESSAGE` on stderr; a           2
                                      ConfigError's message starts with its field
    click.UsageError (bad flag)       click's usage line and message                2
    other click.ClickException        its message                                   its exit_code (1)
    KeyboardInterrupt                 nothing more                                  130 (128 + SIGINT)
    anything else                     propagates, with its traceback: a bug         1

`default_of` is how a flag's default is read from the config dataclass that owns it, so that the
two cannot drift apart; `as_help` makes a module's docstring its command's --help; `FINITE` is the
flag type of a number that must be finite (click's float takes nan and inf).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import click

from elasticml.errors import ElasticMLError

INTERRUPTED = 130


def report(exc: ElasticMLError, prog: str) -> None:
    """`PROG: error: ` and the message's first line, then any further lines as they are."""
    first, *rest = str(exc).splitlines() or [""]
    click.echo(f"{prog}: error: {first}", err=True)
    if rest:
        click.echo("\n".join(rest), err=True)


def run(command: click.Command, argv: Sequence[str] | None = None, *, prog: str, prog_name: str | None = None,
        **extra: Any) -> int:
    """Run `command` on `argv` (default: sys.argv[1:]) and return its exit status, by the table above."""
    try:
        rv = command.main(args=None if argv is None else list(argv), prog_name=prog_name, standalone_mode=False,
                          **extra)
    except ElasticMLError as exc:
        report(exc, prog)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort as exc:
        # click turns a KeyboardInterrupt into Abort when it is not left to exit on its own.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return INTERRUPTED
        click.echo("Aborted!", err=True)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED
    return rv if type(rv) is int else 0


class _Finite(click.ParamType):
    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number, got {value!r}", param, ctx)
        return number


FINITE = _Finite()


class EntryGroup(click.Group):
    """A top-level click group that ends through `run`, however it is called: as a console script
    (`elasticml`), by `python -m`, or by click's CliRunner in tests."""

    def __init__(self, *args: Any, prog: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prog = prog

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:  # `run` calling in; a caller asking for click's raw exceptions gets them too
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        sys.exit(run(self, args, prog=self.prog, prog_name=prog_name, complete_var=complete_var, **extra))


def as_help(doc: str | None) -> str:
    """A module docstring as a command's --help: its indented examples kept as they are (click's `\\b`)
    and not rewrapped into the prose."""
    paragraphs = (doc or "").strip("\n").split("\n\n")
    return "\n\n".join("\b\n" + p if p.startswith(" ") else p for p in paragraphs)


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name`, for a flag that sets that field."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise TypeError(f"{cls.__name__} has no field {name!r}")
