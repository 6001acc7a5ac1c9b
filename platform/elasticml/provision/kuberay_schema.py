"""A JSON schema for the KubeRay resources we generate (ray.io/v1 RayCluster, RayJob, RayService).

No registry package carries KubeRay's CRDs, so this schema is written by hand
from KubeRay's documented v1 API fields (RayClusterSpec, HeadGroupSpec,
WorkerGroupSpec, AutoscalerOptions, RayJobSpec, RayServiceSpec) and the core
Kubernetes PodSpec fields we use. It is strict where the CRD is (field names
and types, enums, required fields) so a typo fails here rather than at
`kubectl apply`; it does not cover the whole PodSpec.
"""

from __future__ import annotations

from typing import Any

QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[numkMGTPE])?$"}]}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "image": {"type": "string", "minLength": 1},
        "env": {"type": "array", "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "value": {"type": "string"},
                           "valueFrom": {"type": "object", "properties": {"secretKeyRef": {
                               "type": "object", "required": ["name", "key"],
                               "properties": {"name": {"type": "string"}, "key": {"type": "string"}}}}}},
            "additionalProperties": False}},
        "resources": {"type": "object", "properties": {
            "requests": {"type": "object", "additionalProperties": QUANTITY},
            "limits": {"type": "object", "additionalProperties": QUANTITY}}, "additionalProperties": False},
    },
}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "required": ["containers"], "properties": {
            "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
            "nodeSelector": STRING_MAP,
            "tolerations": {"type": "array", "items": {"type": "object", "properties": {
                "key": {"type": "string"}, "operator": {"enum": ["Exists", "Equal"]}, "value": {"type": "string"},
                "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}}, "additionalProperties": False}},
        }},
    },
}
RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object", "additionalProperties": False, "properties": {
            "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
            "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
            "image": {"type": "string"}, "imagePullPolicy": {"type": "string"}, "resources": {"type": "object"}}},
        "headGroupSpec": {"type": "object", "required": ["template"], "additionalProperties": False, "properties": {
            "rayStartParams": STRING_MAP, "serviceType": {"type": "string"}, "template": POD_TEMPLATE}},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "required": ["groupName", "template"], "additionalProperties": False, "properties": {
                "groupName": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "replicas": {"type": "integer", "minimum": 0},
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "rayStartParams": STRING_MAP,
                "template": POD_TEMPLATE}}},
    },
}
METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}, "labels": STRING_MAP}}


def _resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec}}


SCHEMAS: dict[str, dict[str, Any]] = {
    "RayCluster": _resource("RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": _resource("RayJob", {"type": "object", "required": ["entrypoint"], "additionalProperties": False, "properties": {
        "entrypoint": {"type": "string", "minLength": 1}, "runtimeEnvYAML": {"type": "string"},
        "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
        "rayClusterSpec": RAY_CLUSTER_SPEC}}),
    "RayService": _resource("RayService", {"type": "object", "required": ["serveConfigV2", "rayClusterConfig"],
                                           "additionalProperties": False, "properties": {
        "serveConfigV2": {"type": "string"}, "rayClusterConfig": RAY_CLUSTER_SPEC}}),
}


def validate_manifest(doc: dict[str, Any]) -> None:
    """jsonschema.ValidationError if the manifest does not match; also min <= replicas <= max."""
    import jsonschema

    kind = doc.get("kind")
    if kind not in SCHEMAS:
        raise jsonschema.ValidationError(f"kind {kind!r} is not one of {', '.join(SCHEMAS)}")
    jsonschema.validate(doc, SCHEMAS[kind])
    spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
    for g in spec.get("workerGroupSpecs", []):
        if not g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0):
            raise jsonschema.ValidationError(f"worker group {g['groupName']}: need minReplicas <= replicas <= maxReplicas")
