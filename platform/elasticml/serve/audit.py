"""What a Serve deployment tells the cluster's audit trail, and who may make one.

Every build of a completion app (`serve deploy`, `serve run`, a canary's two sides) is recorded
by the scheduler as a `deploy` event before any replica starts: which checkpoint (its step and
manifest MAC, so a swapped model shows), where it runs, and which tenants' API keys it admits,
with a fingerprint of the whole keyring. Keys take effect only when an app is built, so each key
added or revoked is in the trail as the first build that carries it, by whoever made the build.

Who: an app with a `tenant` is that tenant's workload (the scheduler places it; its placement is
audited as well); an app without one (`market:` or anywhere) is an operator's: the door takes its
record from an admin only, so a tenant's build of it fails, refused and audited, and a tenant
cannot deploy around the scheduler's placement, budget or residency.
On a bare Ray cluster with no elasticml scheduler there is no trail to write; the build goes on
with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from elasticml.scheduler.capacity import Allocation
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.serve.config import ServeConfig

log = logging.getLogger(__name__)


def keyring_fingerprint(api_keys: dict[str, str]) -> str:
    """A short digest of tenant -> key digest: equal for the same keyring, different after any change."""
    return hashlib.sha256(json.dumps(sorted(api_keys.items())).encode()).hexdigest()[:16]


def deployment_record(cfg: ServeConfig, allocations: list[Allocation], meta: dict[str, Any] | None) -> str:
    """The `why` of a deploy event: what runs, from which checkpoint, for whom."""
    where = ", ".join(f"{a.workers} on {a.node_type} ({a.market})" for a in allocations) or (
        f"market {cfg.market}" + (f", {cfg.num_replicas} replica(s)" if cfg.preset == "fixed" else
                                  f", autoscaling {cfg.preset}"))
    parts = [f"checkpoint {cfg.checkpoint[:300]}"]
    if meta is not None:
        parts.append(f"step {meta.get('step')} manifest mac {str(meta.get('mac'))[:16]}")
    parts += [f"{cfg.device} {cfg.resolved_precision}", where,
              f"api keys for {sorted(cfg.api_keys)[:50] or 'nobody (open)'} keyring {keyring_fingerprint(cfg.api_keys)}"]
    if cfg.allowed_model_modules:
        parts.append(f"model modules {cfg.allowed_model_modules[:10]}")
    return "; ".join(parts)[:2000]


def scheduler_or_none() -> SchedulerClient | None:
    """The cluster's scheduler as this process's principal; None on a Ray cluster without one."""
    from elasticml.errors import SchedulerNotRunning
    from elasticml.scheduler.client import SchedulerClient

    try:
        return SchedulerClient.connect()
    except SchedulerNotRunning:
        return None


def record_deployment(cfg: ServeConfig, allocations: list[Allocation], meta: dict[str, Any] | None,
                      sched: SchedulerClient | None) -> None:
    """Into the audit trail before any replica starts; a failure to record fails the build."""
    if sched is None:
        log.warning("no elasticml scheduler on this cluster: the deployment of %s is not audited", cfg.name)
        return
    sched.record_event("deploy", cfg.name, deployment_record(cfg, allocations, meta))
