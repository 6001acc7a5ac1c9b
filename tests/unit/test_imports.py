"""No import cycle anywhere in the package, lazy (function-level) imports included: each module's
dependencies can be read one way. Imports under `if TYPE_CHECKING:` are for the type checker only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "elasticml"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    here = _module(path)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here and name != "elasticml":
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py")]
    modules = {_module(p) for p in files}
    return {_module(p): _imports(p, modules) for p in files}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_boto3_and_the_digest_of_secrets_each_live_in_one_module():
    """boto3's clients are made in aws_client.py only; a secret's digest is secret_file.digest only."""
    boto3, digests = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if "import boto3" in text:
            boto3.append(path.name)
        if "\ndef digest(" in text:
            digests.append(path.name)
    assert boto3 == ["aws_client.py"] and digests == ["secret_file.py"]


def test_every_error_is_declared_in_the_errors_tree():
    """errors.py holds every exception the package defines (one tree, one map to exit codes), but for a
    module's private control flow (`_Name`), which never leaves it."""
    import re

    pattern = re.compile(r"^class [A-Za-z]\w*\((?:[\w.]*(?:Error|Exception|Failed|Refused|Denied|Running)\b[^)]*)\):", re.M)
    outside = {p.name: pattern.findall(p.read_text()) for p in sorted(PACKAGE.rglob("*.py")) if p.name != "errors.py"}
    assert {k: v for k, v in outside.items() if v} == {}
