"""Building the keyword-only config dataclasses from mappings loaded at the edges (YAML, JSON, flags)."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any, TypeVar

from elasticml.errors import ConfigError

T = TypeVar("T")


def from_mapping(cls: type[T], raw: Any, *, source: str) -> T:
    """cls(**raw), with unknown and missing fields and wrong types reported as ConfigError naming source."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of field: value, got {type(raw).__name__}", source=source)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", source=source)
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
        raise ConfigError(f"must be {want}, got {type(value).__name__} {str(value)[:40]!r}", field=field)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f"must be in [{lo:g}, {hi:g}], got {value!r}", field=field)


def check_choice(value: Any, allowed: tuple[str, ...], *, field: str) -> None:
    """One of `allowed` (a Literal's get_args, say)."""
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(allowed)}, got {value!r}", field=field)


def check_text(value: Any, *, field: str, max_len: int, pattern: str | None = None) -> None:
    """A non-empty string of at most max_len characters, matching `pattern` (a full match) when given."""
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {type(value).__name__}", field=field)
    if not value or len(value) > max_len:
        raise ConfigError(f"must be 1 to {max_len} characters, got {len(value)}", field=field)
    if pattern is not None and re.fullmatch(pattern, value) is None:
        raise ConfigError(f"must match {pattern} (got {value[:40]!r})", field=field)
