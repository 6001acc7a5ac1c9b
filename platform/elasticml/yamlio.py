"""The platform's one YAML reader (and its writer): what a tenant's file can make it do is bounded.

Every YAML elasticml reads (cluster, train and `serve deploy` files, workload specs, YAML inside
KubeRay manifests) goes through `load_yaml`, which refuses, with a ConfigError naming the source,
line and column:

- more than `max_bytes` (1 MiB unless a caller needs more), or bytes that are not UTF-8;
- anchors and aliases: a few hundred bytes of aliases ("billion laughs") expand to gigabytes, and
  no config of ours needs them;
- collections nested deeper than MAX_DEPTH (PyYAML's composer recurses: 5,000 levels crash it);
- duplicate keys (YAML forbids them; PyYAML keeps the last silently) and keys that are not
  strings (`1:`, `true:`, `? [a]`);
- integers of more than MAX_INT_DIGITS digits, refused before int() reads them;
- tags beyond the core schema's (`!!binary`, `!!set`, `!!timestamp`, `!!python/...`).

Plain scalars follow the YAML 1.2 core schema, not PyYAML's YAML 1.1: only true/false are
booleans (`yes`, `no`, `on`, `off` stay strings), `1:30` is a string, not 90, `010` is ten, not
eight, dates stay strings; `.inf` and `.nan` are floats, which the typed configs refuse. Files Ray
reads too (cluster configs, `serve deploy` files, YAML inside KubeRay manifests) are loaded with
`agree_with_yaml11=True`, which refuses a plain scalar YAML 1.1 reads differently (quote it): we
must never check one value while Ray runs another.

`dump_yaml` writes what both read back unchanged: no aliases, and such scalars quoted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, ClassVar

import yaml
from yaml.nodes import MappingNode, ScalarNode

from elasticml.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_INT_DIGITS", "dump_yaml", "load_yaml", "load_yaml_documents"]

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
"""Nested sequences and mappings; our deepest files, the KubeRay manifests, nest 13."""
MAX_INT_DIGITS = 20
"""Enough for any 64-bit count; a longer run of digits is a mistake or an attack, not a number."""

_T = "tag:yaml.org,2002:"
# The YAML 1.2 core schema (spec 1.2.2, section 10.3.2), each pattern matching the whole scalar.
_NULL = re.compile(r"(?:~|null|Null|NULL|)\Z")
_BOOL = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")
_INT = re.compile(r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT = re.compile(r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z")
_YAML11 = yaml.resolver.Resolver()  # PyYAML's YAML 1.1 table, as Ray and `serve deploy` read
_OCTAL11 = re.compile(r"[-+]?0[0-9_]")  # an int to both schemas, but octal to YAML 1.1 only


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that this loader will not read; carries where, like PyYAML's own errors."""

    def __init__(self, mark: Any, problem: str):
        super().__init__(problem=problem, problem_mark=mark)


class _Loader(yaml.SafeLoader):
    # Fresh tables, not copies of SafeLoader's: nothing of YAML 1.1 (yes/no, 1:30, dates, `<<`, `=`)
    # resolves, and only the core schema's tags construct; any other tag is refused.
    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    yaml_constructors: ClassVar[dict[Any, Any]] = {}

    def __init__(self, stream: str, agree_with_yaml11: bool):
        super().__init__(stream)
        self._depth = 0
        self._agree_with_yaml11 = agree_with_yaml11

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(event.start_mark, f"alias *{_cut(event.anchor)}: aliases are not allowed; write it out")  # type: ignore[arg-type]  # an alias always names its anchor
        if getattr(event, "anchor", None) is not None:
            raise _Refused(event.start_mark, f"anchor &{_cut(event.anchor)}: anchors are not allowed; write it out")
        nested = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        self._depth += nested
        if self._depth > MAX_DEPTH:  # checked on the way down, before PyYAML's recursion goes deeper
            raise _Refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= nested

    def compose_scalar_node(self, anchor: Any) -> Any:
        event = self.peek_event()
        node = super().compose_scalar_node(anchor)
        if self._agree_with_yaml11 and event.tag is None and event.implicit[0]:
            old = _YAML11.resolve(ScalarNode, event.value, (True, False))
            if old != node.tag or (old == _T + "int" and _OCTAL11.match(event.value)):
                ours, theirs = (_kind(node.tag), _kind(old)) if old != node.tag else ("decimal", "octal")
                raise _Refused(event.start_mark, f"{_cut(event.value)!r} reads as {ours} here but as {theirs} "
                                                 "to YAML 1.1 readers such as Ray's; quote it")
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[str, Any]:  # type: ignore[override]  # narrower than PyYAML's dict[Hashable, Any]: keys are refused unless str
        if not isinstance(node, MappingNode):
            raise _Refused(node.start_mark, f"expected a mapping, found {node.id}")
        mapping: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _T + "str"):
                what = _kind(key_node.tag) if isinstance(key_node, ScalarNode) else key_node.id
                raise _Refused(key_node.start_mark, f"a mapping key must be a string, got {what}; quote it")
            key = key_node.value
            if key in mapping:
                raise _Refused(key_node.start_mark, f"duplicate key {_cut(key)!r} (first at line {lines[key]})")
            lines[key] = key_node.start_mark.line + 1
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def _map(self, node: Any) -> Any:
        data: dict[str, Any] = {}
        yield data  # before the values, so that construction stays iterative (PyYAML's own pattern)
        data.update(self.construct_mapping(node))

    def _int(self, node: Any) -> int:
        text = self.construct_scalar(node)
        body = text.lstrip("+-")
        base = {"0x": 16, "0o": 8}.get(body[:2], 10)
        digits = len(body) - (2 if base != 10 else 0)
        if digits > MAX_INT_DIGITS:  # before the pattern and int() read it
            raise _Refused(node.start_mark, f"an integer of {digits} digits; at most {MAX_INT_DIGITS} (quote a name)")
        if not _INT.match(text):
            raise _Refused(node.start_mark, f"{_cut(text)!r} is not a YAML 1.2 integer")
        return int(text[2:], base) if base != 10 else int(text)

    def _float(self, node: Any) -> float:
        text = self.construct_scalar(node)
        if not _FLOAT.match(text):
            raise _Refused(node.start_mark, f"{_cut(text)!r} is not a YAML 1.2 float")
        # Python's float() reads "inf" and "nan", not YAML's ".inf" and ".nan"
        return float(text.replace(".", "", 1) if text.lower().lstrip("+-") in (".inf", ".nan") else text)

    def _bool(self, node: Any) -> bool:
        text = self.construct_scalar(node)
        if not _BOOL.match(text):
            raise _Refused(node.start_mark, f"{_cut(text)!r} is not true or false")
        return text.lower() == "true"

    def _other_tag(self, node: Any) -> None:
        tag = _cut(node.tag.replace(_T, "!!", 1))
        raise _Refused(node.start_mark, f"tag {tag!r} is not allowed; only str, int, float, bool, null, seq, map")


# By first character ("" is `key:` with nothing after it); int before float, so that `12` is an int.
for _firsts, _tag, _pattern in ((["~", "n", "N", ""], "null", _NULL), (list("tTfF"), "bool", _BOOL),
                                (list("-+0123456789"), "int", _INT), (list("-+.0123456789"), "float", _FLOAT)):
    _Loader.add_implicit_resolver(_T + _tag, _pattern, _firsts)
for _tag, _construct in (("null", yaml.SafeLoader.construct_yaml_null), ("bool", _Loader._bool), ("int", _Loader._int),
                         ("float", _Loader._float), ("str", yaml.SafeLoader.construct_yaml_str),
                         ("seq", yaml.SafeLoader.construct_yaml_seq), ("map", _Loader._map)):
    _Loader.add_constructor(_T + _tag, _construct)
_Loader.add_constructor(None, _Loader._other_tag)


def load_yaml(src: str | bytes | Path, *, source: str, max_bytes: int = MAX_BYTES,
              agree_with_yaml11: bool = False) -> Any:
    """The one YAML document in `src` (YAML text, its UTF-8 bytes, or a file: a str is always text),
    read as the module docstring says; ConfigError naming `source`, line and column otherwise."""
    return _load(src, source, max_bytes, agree_with_yaml11, lambda loader: loader.get_single_data())


def load_yaml_documents(src: str | bytes | Path, *, source: str, max_bytes: int = MAX_BYTES,
                        agree_with_yaml11: bool = False) -> list[Any]:
    """Every document of a `---`-separated stream (a file of Kubernetes manifests), by the same rules."""
    def every(loader: _Loader) -> list[Any]:
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
        return docs

    return _load(src, source, max_bytes, agree_with_yaml11, every)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the same object twice is written out twice, never as an alias load_yaml refuses


# A string that either schema would read as something else is quoted (SafeDumper's table is YAML 1.1's).
for _first, _rules in _Loader.yaml_implicit_resolvers.items():
    for _tag, _pattern in _rules:
        _Dumper.add_implicit_resolver(_tag, _pattern, [_first])


def dump_yaml(obj: Any, **kwargs: Any) -> str:
    """`obj` as YAML that `load_yaml` (even with agree_with_yaml11) and YAML 1.1 readers read back equal."""
    return yaml.dump(obj, Dumper=_Dumper, **kwargs)


def _load(src: str | bytes | Path, source: str, max_bytes: int, agree_with_yaml11: bool,
          read: Callable[[_Loader], Any]) -> Any:
    text = _text_of(src, source, max_bytes)
    loader = None
    try:
        loader = _Loader(text, agree_with_yaml11)  # its reader refuses control characters, here
        return read(loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        verdict = "YAML refused" if isinstance(exc, _Refused) else "not valid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(", ".join(str(p)[:300] for p in (exc.context, exc.problem) if p).split())[:300]
        raise ConfigError(f"{verdict}{where}: {problem}", source=source) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        raise ConfigError(f"not valid YAML at line {line}, column {column}: character #x{exc.character:04x} "
                          "is not allowed", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def _text_of(src: str | bytes | Path, source: str, max_bytes: int) -> str:
    if isinstance(src, Path):
        try:
            with src.open("rb") as f:
                src = f.read(max_bytes + 1)  # never more than the cap, whatever the file is
        except FileNotFoundError:
            raise ConfigError("no such file", source=source) from None
        except OSError as exc:
            raise ConfigError(f"cannot read it: {exc.strerror or type(exc).__name__}", source=source) from None
    if isinstance(src, str):
        try:  # a character is at least a byte: what the cap decides on is in the first max_bytes + 1
            src = src[:max_bytes + 1].encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError("YAML text holds lone surrogates, which are not UTF-8", source=source) from None
    if len(src) > max_bytes:
        raise ConfigError(f"YAML larger than {max_bytes} bytes", source=source)
    try:
        return src.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 (byte {exc.start} is 0x{src[exc.start]:02x}); save the file as UTF-8",
                          source=source) from None


def _kind(tag: str) -> str:
    name = tag.rsplit(":", 1)[-1]
    return {"str": "string", "int": "integer", "bool": "boolean"}.get(name, name)


def _cut(text: str, limit: int = 40) -> str:
    """At most `limit` characters of `text`, sliced before anything formats it."""
    return text[:limit] + ("..." if len(text) > limit else "")
