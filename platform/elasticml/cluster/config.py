"""Cluster configs: Ray cluster-launcher YAMLs, read and checked at the edge.

A file in `cluster_configs/` is a real Ray cluster-launcher YAML, valid
against Ray's own `ray-schema.json`, so what `ray up` reads is what we test.
`load_cluster_spec` checks it once, on load, and returns a `ClusterSpec`: the
typed view the rest of elasticml works with (node types, their markets and
labels). Every worker node type must say which market it is in through its
labels (see `elasticml.labels`); a config that does not is refused with the
node type named.

`render_local_autoscaling_config` turns a local config (Ray's fake multi-node
provider, `provider.type: external`) into the complete file Ray's autoscaler
v2 reads at `ray start --head --autoscaling-config`: the external provider
gets none of Ray's defaults filled in, so every top-level key is written out.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from elasticml import labels as L
from elasticml.errors import ConfigError
from elasticml.yamlio import load_yaml

FAKE_PROVIDER_MODULE = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
# The fake provider names nodes by 56-hex-digit ids and counts up from the head's.
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"

# Keys Ray's monitor expects in every autoscaling config. Cloud providers get
# them from their defaults.yaml; the external provider gets none.
_LAUNCHER_DEFAULTS: dict[str, Any] = {
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 5,
    "auth": {},
    "docker": {},
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}


@dataclass(kw_only=True, frozen=True)
class NodeTypeSpec:
    """One node type of a cluster config."""

    name: str
    """The key under `available_node_types`."""
    resources: dict[str, int]
    """Logical resources a node of this type offers (CPU, GPU, memory, custom)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Ray node labels set when the node starts."""
    min_workers: int = 0
    max_workers: int = 0
    is_head: bool = False

    def __post_init__(self) -> None:
        if self.min_workers < 0 or self.max_workers < self.min_workers:
            raise ConfigError(
                f"min_workers={self.min_workers} and max_workers={self.max_workers} must satisfy "
                "0 <= min_workers <= max_workers",
                field=f"available_node_types.{self.name}",
            )

    @property
    def market(self) -> L.Market | None:
        return L.market_of(self.labels)


@dataclass(kw_only=True, frozen=True)
class ClusterSpec:
    """A validated cluster config: what the rest of elasticml reads."""

    name: str
    source: str
    """The file it was read from."""
    node_types: dict[str, NodeTypeSpec]
    head_node_type: str
    provider_type: str
    idle_timeout_minutes: float
    raw: dict[str, Any] = field(repr=False)
    """The YAML as loaded, for rendering."""

    @property
    def worker_types(self) -> dict[str, NodeTypeSpec]:
        return {n: t for n, t in self.node_types.items() if not t.is_head}

    @property
    def is_local(self) -> bool:
        return (
            self.provider_type == "external"
            and self.raw.get("provider", {}).get("module") == FAKE_PROVIDER_MODULE
        )

    def node_type(self, name: str) -> NodeTypeSpec:
        try:
            return self.node_types[name]
        except KeyError:
            known = ", ".join(sorted(self.node_types))
            raise ConfigError(
                f"unknown node type {name!r}; this config defines: {known}", source=self.source
            ) from None

    def types_in_market(self, market: L.Market) -> list[NodeTypeSpec]:
        return [t for t in self.worker_types.values() if t.market == market]


@lru_cache(maxsize=1)
def ray_schema() -> dict[str, Any]:
    """Ray's own JSON schema for cluster-launcher YAMLs, as shipped in the wheel."""
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    """Read, schema-check and interpret a cluster YAML; ConfigError says what is wrong."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(
            "no such file; pass a cluster YAML such as cluster_configs/local.yaml", source=source
        )
    # `ray up` reads the file too: a scalar YAML 1.1 reads otherwise is refused, not read two ways
    return parse_cluster_spec(load_yaml(path, source=source, agree_with_yaml11=True), source=source)


def parse_cluster_spec(raw: Any, *, source: str = "<config>") -> ClusterSpec:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"expected a mapping of cluster-launcher keys at the top level, got {type(raw).__name__}",
            source=source,
        )
    _check_ray_schema(raw, source)
    _check_finite(raw, "", source)
    for key in ("cluster_name", "available_node_types", "head_node_type"):
        if key not in raw:
            raise ConfigError("required key is missing", source=source, field=key)

    head = raw["head_node_type"]
    available = raw["available_node_types"]
    if head not in available:
        raise ConfigError(
            f"names node type {head!r}, which is not under available_node_types "
            f"(defined: {', '.join(sorted(available))})",
            source=source,
            field="head_node_type",
        )
    node_types: dict[str, NodeTypeSpec] = {}
    for name, body in available.items():
        node_labels = {str(k): str(v) for k, v in (body.get("labels") or {}).items()}
        is_head = name == head
        if not is_head:
            _check_market_labels(name, node_labels, source)
        try:
            node_types[name] = NodeTypeSpec(
                name=name,
                resources=dict(body["resources"]),
                labels=node_labels,
                min_workers=int(body.get("min_workers", 0)),
                max_workers=int(body.get("max_workers", raw.get("max_workers", 0))),
                is_head=is_head,
            )
        except ConfigError as exc:
            raise ConfigError(str(exc), source=source) from None
    return ClusterSpec(
        name=str(raw["cluster_name"]),
        source=source,
        node_types=node_types,
        head_node_type=head,
        provider_type=str(raw["provider"]["type"]),
        idle_timeout_minutes=float(raw.get("idle_timeout_minutes", 5)),
        raw=raw,
    )


def _check_ray_schema(raw: dict[str, Any], source: str) -> None:
    import jsonschema

    validator = jsonschema.Draft7Validator(ray_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise ConfigError(
            f"does not match Ray's cluster-launcher schema (ray-schema.json): {err.message}",
            source=source,
            field=where,
        )


def _check_finite(value: Any, path: str, source: str) -> None:
    # Ray's schema lets .inf and .nan through its `number` fields (idle_timeout_minutes, upscaling_speed...);
    # no launcher setting means either.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value}", source=source, field=path or "<top level>")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _check_finite(item, f"{path}.{key}" if path else str(key), source)


def _check_market_labels(name: str, node_labels: dict[str, str], source: str) -> None:
    field_path = f"available_node_types.{name}.labels"
    market_type = node_labels.get(L.MARKET_TYPE)
    if market_type not in L.RAY_MARKET_TYPES:
        raise ConfigError(
            f"worker node type needs label {L.MARKET_TYPE!r} set to one of "
            f"{', '.join(L.RAY_MARKET_TYPES)} (got {market_type!r}); reserved capacity is "
            f"'on-demand' plus {L.CAPACITY}: {L.RESERVED}",
            source=source,
            field=field_path,
        )
    capacity = node_labels.get(L.CAPACITY)
    if capacity is not None and (capacity != L.RESERVED or market_type != "on-demand"):
        raise ConfigError(
            f"{L.CAPACITY!r} may only be {L.RESERVED!r}, on a node type whose "
            f"{L.MARKET_TYPE} is 'on-demand' (got {capacity!r} with {market_type!r})",
            source=source,
            field=field_path,
        )


def render_local_autoscaling_config(spec: ClusterSpec, *, gcs_address: str) -> dict[str, Any]:
    """The complete autoscaling config for a local cluster whose GCS listens on gcs_address."""
    if not spec.is_local:
        raise ConfigError(
            f"provider is {spec.provider_type!r}, not the local fake multi-node provider; "
            "start cloud configs with `ray up`",
            source=spec.source,
            field="provider",
        )
    rendered = copy.deepcopy(_LAUNCHER_DEFAULTS)
    rendered.update(copy.deepcopy(spec.raw))
    provider = rendered["provider"]
    # The fake provider dials 6379 unless told where the GCS is.
    provider["gcs_address"] = gcs_address
    provider.setdefault("head_node_id", FAKE_HEAD_NODE_ID)
    provider.setdefault("launch_multiple", True)
    provider.setdefault("use_node_id_as_ip", True)
    provider.setdefault("disable_node_updaters", True)
    provider.setdefault("disable_launch_config_check", True)
    for name, body in rendered["available_node_types"].items():
        body.setdefault("node_config", {})
        node_labels = dict(body.get("labels") or {})
        if name != spec.head_node_type:
            node_labels.setdefault(L.NODE_TYPE, name)
        body["labels"] = node_labels
    return rendered
