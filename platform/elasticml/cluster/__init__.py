"""The local elastic cluster: Ray cluster-launcher YAMLs, read, validated and run on this machine."""

from elasticml.cluster.config import ClusterSpec, NodeTypeSpec, load_cluster_spec
from elasticml.cluster.local import ClusterInfo, LocalCluster

__all__ = ["ClusterSpec", "NodeTypeSpec", "load_cluster_spec", "LocalCluster", "ClusterInfo"]
