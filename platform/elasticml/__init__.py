"""elasticml: a Ray-based elastic compute platform for ML teams.

Packages: `cluster` (local elastic cluster from cluster YAMLs), `data`
(Parquet corpora), `models` (the reference transformer), `train` (Ray Train
loop), `serve` (text generation for Serve apps). Errors live in `errors`,
node labels in `labels`, token handling in `auth`.
"""

from elasticml.errors import (
    AuthError,
    CheckpointError,
    ClusterAlreadyRunning,
    ClusterError,
    ClusterNotRunning,
    ConfigError,
    DataError,
    ElasticMLError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ElasticMLError",
    "ConfigError",
    "ClusterError",
    "ClusterAlreadyRunning",
    "ClusterNotRunning",
    "AuthError",
    "DataError",
    "CheckpointError",
]
