"""A user's own model, named as `module:factory`, trained by the same loop as the reference one.

The contract, checked where it can be before any worker starts:

- `factory()` takes no arguments and returns a `torch.nn.Module`;
- the module maps int64 byte tokens `(B, T)` (values 0..255, the corpus's
  alphabet) to logits `(B, T, V)` with `V >= 256`;
- if it has a `blocks` or `layers` attribute that is a `ModuleList`, each entry
  is sharded on its own (FSDP2 then gathers one block at a time), otherwise the
  model is sharded as a whole;
- an optional method `flops_per_token(seq_len)` gives training FLOPs per token
  for MFU; without it the count is 6 x parameters (no attention term).

The checkpoint records the factory, and `elasticml.train.load_model` rebuilds
the model with it, so the module must be importable where the model is loaded.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

import torch
from torch import nn

from elasticml.errors import ConfigError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve_factory(spec: str, *, field: str = "model") -> Callable[[], nn.Module]:
    if not _SPEC.match(spec):
        raise ConfigError(f"expected 'package.module:function', got {spec!r}", field=field)
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} ({exc}); is it on PYTHONPATH or in the job's "
                          "working_dir?", field=field) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name!r} has no callable {attr!r}", field=field)
    return factory


def build_user_model(spec: str) -> nn.Module:
    model = resolve_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module", field="model")
    return model


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The sub-modules to `fully_shard` one by one before the root."""
    for name in ("blocks", "layers"):
        units = getattr(model, name, None)
        if isinstance(units, nn.ModuleList):
            return list(units)
    return []


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    own = getattr(model, "flops_per_token", None)
    if callable(own):
        return float(own(seq_len))
    return 6.0 * sum(p.numel() for p in model.parameters())


def check_output(model: nn.Module, spec: str) -> None:
    """One tiny forward pass: the model must turn (B, T) bytes into (B, T, >=256) logits."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 4, dtype=torch.long))
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's model refusing our input
        raise ConfigError(f"{spec} must map tokens (B, T) to logits (B, T, >=256); on (1, 4) int64 tokens it "
                          f"raised {type(exc).__name__}: {exc}", field="model") from None
    if not (isinstance(out, torch.Tensor) and out.dim() == 3 and out.shape[:2] == (1, 4) and out.shape[2] >= 256):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{spec} must map tokens (B, T) to logits (B, T, >=256); for (1, 4) it returned {shape}",
                          field="model")
