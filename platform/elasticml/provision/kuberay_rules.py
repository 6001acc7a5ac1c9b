"""Will a current KubeRay (and Karpenter) accept this manifest? The CRDs' own schemas, then the rules
the KubeRay controller enforces beyond them.

`validate_manifest(doc)` checks a RayCluster, RayJob, RayService, Karpenter NodePool or
EC2NodeClass against the vendored CRD of its kind (crds/NOTICE.md names the releases) with
jsonschema, then applies `controller_rules`: the checks of KubeRay's
`ray-operator/controllers/ray/utils/validation.go` that matter for what elasticml renders,
each raising `ManifestError` with the controller's reason. Karpenter's CEL rules
(`x-kubernetes-validations`) are not evaluated here. The Kubernetes kinds rendered beside them
(Service, NetworkPolicy, Namespace, ConfigMap, ServiceAccount, RBAC) go through `k8s_core`'s
schemas and rules instead.
"""

from __future__ import annotations

import re
from typing import Any

from elasticml.errors import ConfigError, ManifestError
from elasticml.provision import k8s_core
from elasticml.provision.crd_schemas import CRD_FILES, CRDS, crd_schema
from elasticml.provision.k8s_core import DNS1035, DNS1123_SUBDOMAIN, LABEL_NAME
from elasticml.yamlio import load_yaml

__all__ = ["CRD_FILES", "CRDS", "ManifestError", "crd_schema", "validate_manifest", "controller_rules"]

MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
"""KubeRay's name limits: a RayCluster's 53 (pod names), RayJob/RayService 6 fewer (their clusters' suffix)."""
AUTOSCALER_V2_ENV = "RAY_enable_autoscaler_v2"
RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
UPGRADE_TYPES = ("NewClusterWithIncrementalUpgrade", "NewCluster", "None")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")


def validate_manifest(doc: Any) -> None:
    """ManifestError (naming the field) unless `doc` passes its CRD and the controller's rules."""
    import jsonschema

    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str) or not isinstance(doc.get("apiVersion"), str):
        raise ManifestError("a manifest is a mapping with apiVersion and kind", field="kind")
    core = k8s_core.schema(doc["apiVersion"], doc["kind"])
    schema = core or crd_schema(doc["apiVersion"], doc["kind"])
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top)"
        raise ManifestError(f"{doc['kind']} does not match its CRD: {first.message[:300]}", field=where)
    unknown = _unknown_field(doc, schema, "")
    if unknown is not None:  # the API server's strict field validation (kubectl's default) refuses it
        raise ManifestError(f"{doc['kind']} has a field its {'schema' if core else 'CRD'} does not define", field=unknown)
    if core:
        k8s_core.rules(doc)
    else:
        controller_rules(doc)


def _unknown_field(value: Any, schema: dict[str, Any], at: str) -> str | None:
    """The first field the schema does not define (where it defines the object's fields), else None."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return None
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                return f"{at}.{key}".lstrip(".")
            found = _unknown_field(item, schema["properties"][key], f"{at}.{key}")
            if found:
                return found
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found = _unknown_field(item, schema["additionalProperties"], f"{at}.{key}")
            if found:
                return found
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found = _unknown_field(item, schema["items"], f"{at}[{i}]")
            if found:
                return found
    return None


def controller_rules(doc: dict[str, Any]) -> None:
    kind = doc["kind"]
    if kind not in MAX_NAME:
        return
    name = doc.get("metadata", {}).get("name", "")
    if len(name) > MAX_NAME[kind]:
        raise ManifestError(f"{kind} name should be no more than {MAX_NAME[kind]} characters", field="metadata.name")
    if not DNS1035.fullmatch(name):
        raise ManifestError(f"{kind} name should be a valid DNS1035 label, got {name[:70]!r}", field="metadata.name")
    spec = doc["spec"]
    if kind == "RayCluster":
        _cluster_rules(spec, "spec")
    elif kind == "RayJob":
        _job_rules(spec)
    else:
        _service_rules(spec)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e.get("name"): e.get("value") for e in container.get("env", [])}


def _cluster_rules(spec: dict[str, Any], at: str) -> None:
    head = spec["headGroupSpec"]
    groups = spec.get("workerGroupSpecs", [])
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    options = spec.get("autoscalerOptions") or {}
    head_containers = head["template"]["spec"].get("containers", [])
    if not head_containers:
        raise ManifestError("headGroupSpec should have at least one container", field=f"{at}.headGroupSpec")
    head_env = _env(head_containers[0])
    v2 = autoscaling and (options.get("version") == "v2" or head_env.get(AUTOSCALER_V2_ENV) in ("1", "true"))
    names = [g.get("groupName") for g in groups]
    if len(set(names)) != len(names):
        raise ManifestError(f"worker group names must be unique, got {names}", field=f"{at}.workerGroupSpecs")
    for where, group in [(f"{at}.headGroupSpec", head)] + [(f"{at}.workerGroupSpecs[{i}]", g) for i, g in enumerate(groups)]:
        label = "Head" if group is head else group.get("groupName")
        params = group.get("rayStartParams") or {}
        if "labels" in params:
            raise ManifestError(f"rayStartParams['labels'] is not supported for {label} group; please use the "
                                "top-level Labels field instead", field=f"{where}.rayStartParams.labels")
        if any(params.get(p) for p in RESOURCE_PARAMS) and group.get("resources"):
            raise ManifestError(f"resource fields should not be set in both rayStartParams and Resources for {label} "
                                "group; please use only one", field=f"{where}.resources")
        for key, value in (group.get("labels") or {}).items():
            if not _qualified_name(key):
                raise ManifestError(f"invalid label key for {label} group: {key!r}", field=f"{where}.labels")
            if not (len(value) <= 63 and (value == "" or LABEL_NAME.fullmatch(value))):
                raise ManifestError(f"invalid label value for key {key!r} in {label} group: {value!r}",
                                    field=f"{where}.labels")
        if group is head:
            continue
        if not group["template"]["spec"].get("containers"):
            raise ManifestError("workerGroupSpec should have at least one container", field=where)
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            raise ManifestError(f"worker group {label} must set both minReplicas and maxReplicas when autoscaling is "
                                "disabled", field=where)
        if low is not None and high is not None and low > high:
            raise ManifestError(f"worker group {label} has minReplicas {low} greater than maxReplicas {high}",
                                field=f"{where}.minReplicas")
        if group.get("idleTimeoutSeconds") is not None and not v2:
            raise ManifestError(f"worker group {label}: idleTimeoutSeconds is set, but autoscaler v2 is not enabled; "
                                "set .spec.autoscalerOptions.version to 'v2'", field=f"{where}.idleTimeoutSeconds")
        if group.get("suspend") and autoscaling:
            raise ManifestError(f"worker group {label} cannot be suspended with Autoscaler enabled", field=f"{where}.suspend")
        if v2 and group["template"]["spec"].get("restartPolicy") not in (None, "", "Never"):
            raise ManifestError(f"restartPolicy for worker group {label} should be Never or unset when using "
                                "autoscaler V2", field=f"{where}.template.spec.restartPolicy")
    if not autoscaling and head_env.get(AUTOSCALER_V2_ENV) in ("1", "true"):
        raise ManifestError(f"environment variable {AUTOSCALER_V2_ENV} cannot be set when enableInTreeAutoscaling is "
                            "false", field=f"{at}.enableInTreeAutoscaling")
    if autoscaling and options.get("version") is not None and AUTOSCALER_V2_ENV in head_env:
        raise ManifestError(f"both .spec.autoscalerOptions.version and head Pod env var {AUTOSCALER_V2_ENV} are set, "
                            "please only use the former", field=f"{at}.autoscalerOptions.version")
    if v2 and head["template"]["spec"].get("restartPolicy") not in (None, "", "Never"):
        raise ManifestError("restartPolicy for head Pod should be Never or unset when using autoscaler V2",
                            field=f"{at}.headGroupSpec.template.spec.restartPolicy")
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = spec.get("rayVersion", "")
        parsed = tuple(int(x) for x in re.findall(r"\d+", version)[:3])
        if not version or len(parsed) < 2:
            raise ManifestError("authOptions.mode is 'token' but RayVersion was not specified or is invalid",
                                field=f"{at}.rayVersion")
        if parsed < (2, 52, 0):
            raise ManifestError(f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, got {version}",
                                field=f"{at}.rayVersion")
        if auth.get("enableK8sTokenAuth") and auth.get("secretName"):
            raise ManifestError("authOptions.enableK8sTokenAuth is enabled and authOptions.secretName is also set",
                                field=f"{at}.authOptions")


def _qualified_name(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not (len(prefix) <= 253 and DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and LABEL_NAME.fullmatch(name) is not None


def _job_rules(spec: dict[str, Any]) -> None:
    if spec.get("suspend") and spec.get("shutdownAfterJobFinishes") is False:
        raise ManifestError("a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended",
                            field="spec.suspend")
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None and ttl < 0:
        raise ManifestError("TTLSecondsAfterFinished must be a non-negative integer", field="spec.ttlSecondsAfterFinished")
    if not spec.get("shutdownAfterJobFinishes") and ttl:
        raise ManifestError("a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished",
                            field="spec.ttlSecondsAfterFinished")
    selector = spec.get("clusterSelector")
    if spec.get("rayClusterSpec") is None and not selector:
        raise ManifestError("one of RayClusterSpec or ClusterSelector must be set", field="spec.rayClusterSpec")
    mode = spec.get("submissionMode", "K8sJobMode")
    if spec.get("backoffLimit") is not None:
        if selector:
            raise ManifestError("BackoffLimit is incompatible with ClusterSelector mode", field="spec.backoffLimit")
        if mode == "InteractiveMode":
            raise ManifestError("BackoffLimit is incompatible with InteractiveMode", field="spec.backoffLimit")
        if spec["backoffLimit"] < 0:
            raise ManifestError("backoffLimit must be a positive integer", field="spec.backoffLimit")
    for name in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if spec.get(name) is not None and spec[name] <= 0:
            raise ManifestError(f"{name} must be a positive integer", field=f"spec.{name}")
    if "runtimeEnvYAML" in spec:
        env = _embedded_yaml(spec["runtimeEnvYAML"], "spec.runtimeEnvYAML")
        if env is not None and not isinstance(env, dict):
            raise ManifestError("runtimeEnvYAML must be a mapping", field="spec.runtimeEnvYAML")
    if spec.get("rayClusterSpec") is not None:
        if (spec["rayClusterSpec"].get("authOptions") or {}).get("enableK8sTokenAuth"):
            raise ManifestError("K8s token auth mode is currently not supported for RayJob", field="spec.rayClusterSpec")
        _cluster_rules(spec["rayClusterSpec"], "spec.rayClusterSpec")


def _embedded_yaml(text: str, field: str) -> Any:
    """YAML a manifest carries as a string, read by the platform's one loader (its size cap, no aliases; Ray
    reads it too, so a scalar that YAML 1.1 reads differently is refused)."""
    try:
        return load_yaml(text, source=field.rsplit(".", 1)[-1], agree_with_yaml11=True)
    except ConfigError as exc:
        raise ManifestError(str(exc), field=field) from None


def _service_rules(spec: dict[str, Any]) -> None:
    cluster = spec["rayClusterConfig"]
    if (cluster.get("authOptions") or {}).get("enableK8sTokenAuth"):
        raise ManifestError("K8s token auth mode is currently not supported for RayService", field="spec.rayClusterConfig")
    _cluster_rules(cluster, "spec.rayClusterConfig")
    if (cluster["headGroupSpec"].get("headService") or {}).get("metadata", {}).get("name"):
        raise ManifestError("spec.rayClusterConfig.headGroupSpec.headService.metadata.name should not be set",
                            field="spec.rayClusterConfig.headGroupSpec.headService")
    upgrade = (spec.get("upgradeStrategy") or {}).get("type")
    if upgrade is not None and upgrade not in UPGRADE_TYPES:
        raise ManifestError(f"Spec.UpgradeStrategy.Type value {upgrade} is invalid, valid options are "
                            f"{', '.join(UPGRADE_TYPES)}", field="spec.upgradeStrategy.type")
    if upgrade == "NewClusterWithIncrementalUpgrade" and not cluster.get("enableInTreeAutoscaling"):
        raise ManifestError("Ray Autoscaler is required for NewClusterWithIncrementalUpgrade", field="spec.upgradeStrategy")
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if delay is not None and delay < 0:
        raise ManifestError("Spec.RayClusterDeletionDelaySeconds should be a non-negative integer",
                            field="spec.rayClusterDeletionDelaySeconds")
    if "serveConfigV2" in spec:
        _embedded_yaml(spec["serveConfigV2"], "spec.serveConfigV2")
