"""Every error elasticml raises on purpose, in one place.

The hierarchy::

    ElasticMLError                 base; `elasticml` CLI prints its message and exits 2
    ├── ConfigError                a config file or spec is missing, malformed or invalid
    │   │                          (fields: source, field)
    │   └── ManifestError          a rendered manifest a CRD, the Kubernetes API server or KubeRay would refuse
    ├── ClusterError               the local cluster cannot be started, found or stopped
    │   ├── ClusterAlreadyRunning  `cluster up` on a name that is already up
    │   ├── ClusterNotRunning      a command needs a cluster that is not up
    │   ├── HeadStartFailed        the Ray head process exited while starting
    │   └── SpotCapacityError      a spot launch found no capacity (also a RuntimeError, as providers raise)
    ├── DemoFailed                 a stop of the guided tour did not do what it should
    ├── AuthError                  the cluster's token is missing or unreadable
    ├── DataError                  a corpus directory is missing or incomplete
    ├── CheckpointError            a checkpoint is missing, incomplete, unsigned or holds code; or no key
    ├── AuditError                 the audit trail is not intact, or cannot be written
    └── SchedulerError             the cluster's scheduler cannot answer
        ├── SchedulerNotRunning    no scheduler actor on this cluster
        ├── PlacementRefused       the scheduler will not run a workload (reason: why, with numbers)
        └── AccessDenied           the caller's credential or role may not do this (audited)

Messages say what is wrong and how to fix it, on one line, so that the CLI can
print them as they are.
"""

from __future__ import annotations

__all__ = [
    "ElasticMLError",
    "ConfigError",
    "ManifestError",
    "ClusterError",
    "ClusterAlreadyRunning",
    "ClusterNotRunning",
    "HeadStartFailed",
    "AuthError",
    "DataError",
    "CheckpointError",
    "SchedulerError",
    "SchedulerNotRunning",
    "PlacementRefused",
    "AccessDenied",
    "AuditError",
    "SpotCapacityError",
    "DemoFailed",
]


class ElasticMLError(Exception):
    """Base of every error raised on purpose by elasticml."""


class ConfigError(ElasticMLError, ValueError):
    """A config file, flag or spec is missing, malformed or invalid.

    `source` names the file (or "flags"), `field` the offending key path when
    there is one, so that tools can point at it.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        where = ""
        if source and field:
            where = f"{source}: {field}: "
        elif source:
            where = f"{source}: "
        elif field:
            where = f"{field}: "
        super().__init__(where + message)


class ManifestError(ConfigError):
    """A manifest the CRD, the Kubernetes API server or the KubeRay controller would refuse; `field` says where."""


class ClusterError(ElasticMLError):
    """The local cluster cannot be started, found or stopped."""


class ClusterAlreadyRunning(ClusterError):
    def __init__(self, name: str, pid: int):
        self.name = name
        self.pid = pid
        super().__init__(
            f"cluster {name!r} is already up (supervisor PID {pid}); "
            f"run `elasticml cluster down --name {name}` first or pick another --name"
        )


class ClusterNotRunning(ClusterError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(
            f"cluster {name!r} is not up; start it with `elasticml cluster up --name {name}`"
        )


class HeadStartFailed(ClusterError):
    """The Ray head exited before it was ready; the message carries the tail of its log."""


class SpotCapacityError(ClusterError, RuntimeError):
    """What a cloud answers a spot launch with when it has no capacity (EC2's InsufficientInstanceCapacity);
    the local spot market raises it the same way."""


class DemoFailed(ElasticMLError):
    """A stop of the guided tour did not do what it should."""


class AuthError(ElasticMLError):
    """The cluster's authentication token is missing or unreadable."""


class DataError(ElasticMLError):
    """A corpus directory is missing, empty or was not completely written."""


class CheckpointError(ElasticMLError):
    """A checkpoint is missing, incomplete, not in elasticml's format, not signed with the cluster's
    key or holds something other than data (a pickled call); or there is no checkpoint key here."""


class SchedulerError(ElasticMLError):
    """The cluster's scheduler cannot answer the request."""


class SchedulerNotRunning(SchedulerError):
    def __init__(self, address: str):
        super().__init__(
            f"no elasticml scheduler on the Ray cluster at {address}; `elasticml cluster up` starts one on a local "
            "cluster, `elasticml scheduler start --config CLUSTER.yaml` on a `ray up` or KubeRay cluster"
        )


class PlacementRefused(SchedulerError):
    """The scheduler refuses a workload (residency, budget, a deadline no capacity can meet)."""

    def __init__(self, workload: str, reason: str):
        self.workload = workload
        self.reason = reason
        super().__init__(f"the scheduler refused {workload}: {reason}")

    def __reduce__(self):
        return (PlacementRefused, (self.workload, self.reason))


class AccessDenied(SchedulerError):
    """The caller's credential is unknown, or its role may not do this (it is audited)."""

    def __init__(self, who: str, action: str, reason: str):
        self.who = who
        self.action = action
        self.reason = reason
        super().__init__(f"{who} may not {action}: {reason}")

    def __reduce__(self):
        return (AccessDenied, (self.who, self.action, self.reason))


class AuditError(ElasticMLError):
    """The audit trail is not intact (edited, truncated, reordered) or cannot be written."""
