"""Building the keyword-only config dataclasses from mappings loaded at the edges (YAML, JSON, flags)."""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import fields
from typing import Any, TypeVar

from elasticml.errors import ConfigError

T = TypeVar("T")
MAX_LISTED = 10
"""Unknown fields an error names before it says how many more there are."""


def from_mapping(cls: type[T], raw: Any, *, source: str) -> T:
    """cls(**raw), with unknown and missing fields and wrong types reported as ConfigError naming source."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of field: value, got {type(raw).__name__}", source=source)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # callers pass dataclasses; T is not bound to them
    # keys as text first: a mapping from JSON or code may mix types that do not sort together
    unknown = sorted(k if isinstance(k, str) else shown(k) for k in raw if k not in known)
    if unknown:
        names = ", ".join(k if len(k) <= 40 else shown(k) for k in unknown[:MAX_LISTED])
        more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        raise ConfigError(f"unknown field(s) {names}{more}; known: {', '.join(sorted(known))}", source=source)
    try:
        return cls(**raw)
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source) from None
    except TypeError as exc:  # a required field missing, or a value of the wrong type
        raise ConfigError(str(exc).replace("__init__() ", "").replace(f"{cls.__name__}.", ""), source=source) from None


def check_number(value: Any, *, field: str, lo: float, hi: float, integer: bool = False) -> None:
    """A real number (not a bool), finite, in [lo, hi]; an int when `integer`."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "an integer" if integer else "a number"
        raise ConfigError(f"must be {want}, got {type(value).__name__} {shown(value)}", field=field)
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):  # isfinite(int) may overflow
        raise ConfigError(f"must be in [{lo:g}, {hi:g}], got {shown(value)}", field=field)


def check_bool(value: Any, *, field: str) -> None:
    """true or false, nothing else: YAML 1.2 reads `no` and `off` as strings, and a string is truthy."""
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {type(value).__name__} {shown(value)}", field=field)


def check_choice(value: Any, allowed: tuple[str, ...], *, field: str) -> None:
    """One of `allowed` (a Literal's get_args, say)."""
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(allowed)}, got {shown(value)}", field=field)


def check_text(value: Any, *, field: str, max_len: int, pattern: str | None = None) -> None:
    """A non-empty string of at most max_len characters, matching `pattern` (a full match) when given."""
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {type(value).__name__}", field=field)
    if not value or len(value) > max_len:
        raise ConfigError(f"must be 1 to {max_len} characters, got {len(value)}", field=field)
    if pattern is not None and re.fullmatch(pattern, value) is None:
        raise ConfigError(f"must match {pattern} (got {value[:40]!r})", field=field)


class _Bounded(reprlib.Repr):
    """reprlib, except that nothing is formatted whole before it is cut: reprlib itself slices strings
    first but formats ints, bytes and unknown types whole (a 10 MB value costs a 10 MB repr)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 64:  # 4,300 digits and more: repr() even raises
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    repr_bytearray = repr_bytes

    def repr_instance(self, x: Any, level: int) -> str:
        if x is None or isinstance(x, (bool, float, complex)):  # short by nature
            return repr(x)
        return f"<{type(x).__name__}>"  # a type of ours or a user's: its repr may be any size


def shown(value: Any, limit: int = 40) -> str:
    """A repr of `value` of about `limit` characters for an error message, never built whole first."""
    r = _Bounded()
    r.maxstring = r.maxother = r.maxlong = limit
    return r.repr(value)[:limit + 40]
