"""Building the keyword-only config dataclasses from mappings loaded at the edges (YAML, JSON, flags)."""

from __future__ import annotations

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
