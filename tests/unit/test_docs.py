"""The README and docs/ hold to the code: every command they show parses, every link lands.

A command is checked where a reader would copy it from: the shell blocks of README.md and
docs/*.md (```bash, ```sh, ```shell, unlabelled; in ```console only `$ ` lines), and inline code
that starts as a command does (`elasticml ...`, `python -m elasticml...`, `jobs/X.py --flag`). Each
`elasticml ...` is resolved down the click tree to its subcommand, whose `--help` must list every
`--flag` the line uses; `python -m elasticml.X` and `python jobs/X.py` are run with `--help` in a
subprocess and checked the same way. Commands of other tools (ray, serve, kubectl, aws) are not.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from elasticml.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
# A flag as a reader types it: `--name`, `--name=value`, `[--name VALUE]`.
_FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
# Where the elasticml command starts: at a word boundary a shell would see (not `~/.elasticml/`).
_ELASTICML = re.compile(r"(?:^|(?<=[\s\"'(;|&`]))elasticml\s+(.*)")
_PY_MODULE = re.compile(r"\bpython3?\s+-m\s+(elasticml(?:\.\w+)+)(.*)")
_PY_JOB = re.compile(r"\bpython3?\s+(jobs/\w+\.py)(.*)")
_INLINE = re.compile(r"`([^`]+)`")
_INLINE_COMMAND = re.compile(r"(?:elasticml\s|python3?\s+-m\s+elasticml\.|(?:python3?\s+)?jobs/\w+\.py\s+--)")


def shell_lines(path: Path) -> list[tuple[bool, str]]:
    """The command lines of a page's shell blocks, continuations joined and comments dropped, then its
    inline commands; each with whether it is inline (inline prose may name a group: `elasticml cluster`)."""
    lines: list[tuple[bool, str]] = []
    for lang, body in _FENCE.findall(path.read_text()):
        if lang not in SHELL_LANGS:
            continue
        body = body.replace("\\\n", " ")
        for line in body.splitlines():
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            if line:
                lines.append((False, line))
    for span in _INLINE.findall(_FENCE.sub("", path.read_text())):
        span = " ".join(span.split())  # a span may wrap across lines
        if _INLINE_COMMAND.match(span):
            lines.append((True, span if span.startswith(("python", "elasticml")) else f"python {span}"))
    return lines


def _cut_at_shell_operator(rest: str) -> str:
    """The command's own words: up to a pipe, redirect, `;`, `&&` or the `)` of a `$(...)`."""
    return re.split(r"\s*(?:\|\||&&|[|;>)&`\"])", rest, maxsplit=1)[0]


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote in a placeholder: whitespace is enough to find words
        return text.split()


def documented_commands() -> list[tuple[str, str, str]]:
    """(page, kind, command text) for every elasticml CLI, elasticml module and job command shown."""
    found: list[tuple[str, str, str]] = []
    for path in DOCS:
        page = str(path.relative_to(REPO))
        for inline, line in shell_lines(path):
            if m := _PY_JOB.search(line):
                found.append((page, "job", m.group(1) + " " + _cut_at_shell_operator(m.group(2))))
            elif m := _PY_MODULE.search(line):
                found.append((page, "module", m.group(1) + " " + _cut_at_shell_operator(m.group(2))))
            elif m := _ELASTICML.search(line):
                found.append((page, "cli-ref" if inline else "cli", _cut_at_shell_operator(m.group(1))))
    return found


def _cli_path(words: list[str], *, group_ok: bool = False) -> tuple[list[str], list[str]]:
    """Walk the words down the click groups to the command they name: its path, and the words after it."""
    command: click.Command = cli_main
    path: list[str] = []
    words = list(words)
    while words and isinstance(command, click.Group):
        word = words.pop(0)
        if word.startswith("-"):
            # A group's own option (`elasticml --endpoint URL scheduler ...`) comes before its subcommand.
            option = next((p for p in command.params if word.split("=", 1)[0] in p.opts), None)
            if option is None:
                raise AssertionError(f"`elasticml {' '.join(path)}` has no option {word!r}")
            if "=" not in word and not getattr(option, "is_flag", False) and words:
                words.pop(0)
            continue
        sub = command.commands.get(word)
        if sub is None:
            raise AssertionError(f"`elasticml {' '.join(path)}` has no subcommand {word!r}")
        command, path = sub, [*path, word]
    if isinstance(command, click.Group) and not group_ok:
        raise AssertionError(f"`elasticml {' '.join(path)}` is a group: the line names no command in it")
    return path, words


@cache
def _cli_help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli_main, [*path, "--help"], prog_name="elasticml")
    assert result.exit_code == 0, f"elasticml {' '.join(path)} --help: {result.output}"
    return result.output


def _environ() -> dict[str, str]:
    # The subprocess imports elasticml from this checkout, as `./dev test` and the user at the repo root do.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "platform"), env.get("PYTHONPATH", "")) if p)
    return env


@cache
def _script_help(argv: tuple[str, ...]) -> str:
    proc = subprocess.run([sys.executable, *argv, "--help"], cwd=REPO, env=_environ(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"python {' '.join(argv)} --help exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


def _leading_positionals(words: list[str]) -> list[str]:
    """An argparse subcommand (`tls node`) comes before the first flag; its help is the one to read."""
    out: list[str] = []
    for word in words:
        if word.startswith("-") or not re.fullmatch(r"[a-z][\w-]*", word):
            break
        out.append(word)
    return out


def _missing_flags(text: str, help_text: str) -> list[str]:
    listed = set(_FLAG.findall(help_text))
    return sorted({flag for flag in _FLAG.findall(text) if flag not in listed})


COMMANDS = documented_commands()


def test_the_docs_show_commands_to_check():
    kinds = {kind for _, kind, _ in COMMANDS}
    assert kinds == {"cli", "cli-ref", "module", "job"}, kinds
    assert len(COMMANDS) > 30, COMMANDS


@pytest.mark.parametrize("page,kind,command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, _, c in COMMANDS])
def test_documented_command_parses(page: str, kind: str, command: str):
    words = _words(command)
    if kind in ("cli", "cli-ref"):
        path, rest = _cli_path(words, group_ok=kind == "cli-ref")
        help_text = _cli_help(tuple(path))
        command = " ".join(rest)  # a group's own options were checked on the way down
    elif kind == "module":
        module, args = words[0], words[1:]
        if not _FLAG.search(" ".join(args)) and not _leading_positionals(args):
            # Nothing to check against a parser (and some modules, the spot watcher, have none: they
            # would start working). That the module exists is what the line claims.
            where = REPO / "platform" / Path(*module.split("."))
            assert where.with_suffix(".py").is_file() or (where / "__main__.py").is_file(), module
            return
        help_text = _script_help(("-m", module, *_leading_positionals(args)))
    else:
        assert (REPO / words[0]).is_file(), words[0]
        help_text = _script_help((words[0],))
    missing = _missing_flags(command, help_text)
    assert not missing, f"{page}: `{command}` uses flags its --help does not list: {missing}"


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the manual's pages are under docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not `-` or `_`), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_land(path: Path):
    text = _FENCE.sub("", path.read_text())  # a link-like thing in a code block is code
    broken: list[str] = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)}: links to nothing: {broken}"


def test_the_docs_pages_exist():
    # README's map of the manual names these; a page that goes must leave the map too.
    for name in ("scheduler", "training", "serving", "cloud", "security", "observability", "api", "developers"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name
