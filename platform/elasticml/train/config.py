"""The training run's configuration: one keyword-only dataclass, checked on construction.

Filled from flags (`jobs/train.py`) or a YAML file; a bad value raises
ConfigError naming the field and what would be accepted.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from elasticml import labels as L
from elasticml.dataconf import check_bool, check_number, check_text, from_mapping, shown
from elasticml.errors import ConfigError
from elasticml.models.transformer import SIZES
from elasticml.models.user import resolve_factory
from elasticml.yamlio import load_yaml

MarketChoice = Literal["any", "spot", "on-demand", "reserved"]
_COUNTS = {"steps": (1, 10**9), "global_batch": (1, 2**20), "seq_len": (1, 2**20), "num_workers": (1, 10_000),
           "report_every": (1, 10**9), "keep_checkpoints": (1, 10**6), "warmup_steps": (0, 10**9),
           "checkpoint_every": (0, 10**9), "max_failures": (0, 10**6), "seed": (0, 2**63 - 1)}
_REALS = {"lr": (0.0, 100.0), "weight_decay": (0.0, 100.0), "cpus_per_worker": (0.0, 1024.0)}
_FLAGS = ("use_gpu", "activation_checkpointing", "compile", "async_upload")


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    data: str
    """Corpus folder written by `elasticml data build`."""
    storage_path: str
    """Where Ray Train keeps the run's checkpoints (absolute path)."""
    run_name: str = "train"
    model_size: str = "tiny"
    """One of elasticml.models.SIZES."""
    model: str | None = None
    """A user's model as 'package.module:function' (see elasticml.models.user); replaces model_size."""
    steps: int = 20
    global_batch: int = 8
    """Sequences per optimizer step, across all workers."""
    seq_len: int = 64
    lr: float = 3e-3
    warmup_steps: int = 5
    weight_decay: float = 0.1
    seed: int = 0
    num_workers: int = 2
    """Workers wanted; with min_workers, the most an elastic run grows to."""
    min_workers: int | None = None
    """Elastic: start (or go on) with as few as this many workers when capacity is short (spot)."""
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    market: MarketChoice = "any"
    """Capacity the workers must run on; 'any' lets Ray choose."""
    node_type: str | None = None
    """A pool of the cluster config, or several comma-separated (the scheduler's placement, which
    may span pools); wins over market."""
    peak_tflops: float | None = None
    """Per-worker peak dense TFLOP/s for MFU (H100 bf16: 989); None = MFU not reported."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward: less memory, about a third more compute."""
    compile: bool = False
    """torch.compile each block (GPU runs; on CPU it mostly adds compile time)."""
    async_upload: bool = False
    """Upload checkpoints in the background while training goes on."""
    report_every: int = 5
    """Steps between metric reports (each report waits for Ray Train's controller)."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 = only at the end."""
    keep_checkpoints: int = 2
    max_failures: int = 3
    min_step_seconds: float = 0.0
    """Pace: a run's step k ends no earlier than k times this after the run began (a replayed spot
    market maps work to trace hours by it; report points' waits are absorbed)."""
    teacher: str | None = None
    """Distillation (jobs/distill.py): the checkpoint whose model the student learns from, its
    next-byte distribution softened by `distill_temperature` beside the data's targets."""
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    """Share of the teacher's (soft) term in the loss; the rest is the data's cross-entropy."""
    init_from: str | None = None
    """Start the model, shape and weights, from this checkpoint (a student `elasticml optimize`
    pruned, say) instead of model_size's fresh one; a resumed run starts from its own checkpoint."""

    def __post_init__(self) -> None:
        # Types before comparisons: from YAML, `steps: 1:30` is the string "1:30", `lr: .inf` a float
        # and `compile: no` the string "no", which a comparison or a truth test would misread.
        for name, (lo, hi) in _COUNTS.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value < lo:
                raise ConfigError(f"must be >= {lo}, got {value}", field=name)
            check_number(value, field=name, lo=lo, hi=hi, integer=True)
        for name, (low, high) in _REALS.items():
            check_number(getattr(self, name), field=name, lo=low, hi=high)
        for name in _FLAGS:
            check_bool(getattr(self, name), field=name)
        for name in ("data", "storage_path", "run_name"):
            check_text(getattr(self, name), field=name, max_len=4096)
        if self.min_workers is not None:
            check_number(self.min_workers, field="min_workers", lo=1, hi=10_000, integer=True)
        if self.peak_tflops is not None:
            check_number(self.peak_tflops, field="peak_tflops", lo=0.0, hi=1e6)
        check_number(self.min_step_seconds, field="min_step_seconds", lo=0, hi=3600)
        check_number(self.distill_temperature, field="distill_temperature", lo=0.1, hi=100)
        check_number(self.distill_alpha, field="distill_alpha", lo=0.0, hi=1.0)
        for name in ("teacher", "init_from"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and 0 < len(value) <= 4096):
                raise ConfigError("must be a checkpoint folder, s3:// URI or latest:RUN_DIR of at most 4096 "
                                  "characters", field=name)
        if self.init_from is not None and self.model is not None:
            raise ConfigError("init_from gives the model; leave model unset", field="init_from")
        if self.node_type is not None and not (isinstance(self.node_type, str) and re.fullmatch(
                r"[A-Za-z0-9][A-Za-z0-9_-]*(,[A-Za-z0-9][A-Za-z0-9_-]*)*", self.node_type)):
            raise ConfigError(f"must be a node type name or a comma-separated list of them, got {shown(self.node_type)}",
                              field="node_type")
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr}", field="lr")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"must be > 0, got {self.cpus_per_worker}", field="cpus_per_worker")
        if not isinstance(self.model_size, str) or self.model_size not in SIZES:
            raise ConfigError(f"unknown size {shown(self.model_size)}; choose one of {', '.join(SIZES)}", field="model_size")
        if self.model is not None:
            resolve_factory(self.model)  # importable and callable, before any worker starts
        elif self.seq_len > SIZES[self.model_size].max_seq_len:
            raise ConfigError(
                f"{self.seq_len} exceeds the {self.model_size} model's max_seq_len {SIZES[self.model_size].max_seq_len}",
                field="seq_len",
            )
        if self.global_batch < self.num_workers:
            raise ConfigError(
                f"global_batch={self.global_batch} must be at least num_workers={self.num_workers}", field="global_batch"
            )
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ConfigError(f"must be between 1 and num_workers={self.num_workers}, got {self.min_workers}",
                              field="min_workers")
        if self.market not in get_args(MarketChoice):
            raise ConfigError(f"must be one of {', '.join(get_args(MarketChoice))}, got {shown(self.market)}", field="market")
        if not Path(self.storage_path).is_absolute() and "://" not in self.storage_path:
            raise ConfigError(f"must be an absolute path or a URI, got {shown(self.storage_path)}", field="storage_path")

    def label_selector(self) -> dict[str, str] | None:
        if self.node_type:
            types = self.node_type.split(",")
            return {L.NODE_TYPE: types[0] if len(types) == 1 else f"in({', '.join(types)})"}
        return None if self.market == "any" else L.selector_for(self.market)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> TrainConfig:
        return from_mapping(cls, raw, source=source)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        raw = load_yaml(Path(path), source=str(path)) or {}
        if isinstance(raw, dict):
            raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, source=str(path))
