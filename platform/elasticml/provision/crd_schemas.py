"""The vendored CRDs (crds/NOTICE.md names their releases), read once each, and the error every
manifest check raises. `kuberay_rules` (the CRDs' kinds) and `k8s_core` (Kubernetes' own kinds,
whose schemas partly come from inside these CRDs) both read them here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from elasticml.errors import ManifestError

CRDS = Path(__file__).with_name("crds")
CRD_FILES = {
    ("ray.io/v1", "RayCluster"): "kuberay/ray.io_rayclusters.yaml",
    ("ray.io/v1", "RayJob"): "kuberay/ray.io_rayjobs.yaml",
    ("ray.io/v1", "RayService"): "kuberay/ray.io_rayservices.yaml",
    ("karpenter.sh/v1", "NodePool"): "karpenter-aws/karpenter.sh_nodepools.yaml",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter-aws/karpenter.k8s.aws_ec2nodeclasses.yaml",
}


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version of a vendored CRD."""
    rel = CRD_FILES.get((api_version, kind))
    if rel is None:
        known = ", ".join(f"{k} ({a})" for a, k in CRD_FILES)
        raise ManifestError(f"no vendored CRD for {kind} {api_version}; known: {known}", field="kind")
    # Not load_yaml: the CRDs are vendored release files under review in this repository, not user
    # input, and the largest is 1.4 MB, which libyaml reads in 0.3 s and load_yaml's pure-Python
    # checks in about 4 s per process. They hold no anchors, tags or 1.1-only scalars (both loaders
    # read them equal).
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((CRDS / rel).read_text(), Loader=loader)  # noqa: S506 (a safe loader)
    version = api_version.rsplit("/", 1)[1]
    return next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
