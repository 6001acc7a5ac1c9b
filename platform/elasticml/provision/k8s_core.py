"""Kubernetes' own kinds among the rendered manifests: Service, NetworkPolicy, Namespace, ConfigMap,
ServiceAccount and RBAC's ClusterRole, Role and their bindings.

No CRD describes these, and the project vendors no Kubernetes OpenAPI document, so their schemas
come from what is vendored: a Service is exactly the RayCluster CRD's `headService` (KubeRay embeds
core/v1 Service whole), and NetworkPolicy's selectors are the CRD's LabelSelector; the rest of
NetworkPolicy, Namespace, ConfigMap, ServiceAccount and RBAC is written here from the Kubernetes API
reference, only the
fields the renders may use, so that an unknown field is refused as the API server's strict field
validation does. `rules(doc)` adds the API server's own checks that a schema cannot say (names,
label values, ports, CIDRs). `kuberay_rules.validate_manifest` calls both for these kinds.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from elasticml.errors import ManifestError
from elasticml.provision.crd_schemas import crd_schema

DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
"""A label's name part or value (Kubernetes' qualified-name rules)."""
IANA_SVC_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
"""A named port: at most 15 characters with at least one letter (checked beside the pattern)."""
CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
NAMESPACED = ("Service", "NetworkPolicy", "ConfigMap", "ServiceAccount", "Role", "RoleBinding")
CLUSTER_SCOPED = ("Namespace", "ClusterRole", "ClusterRoleBinding")
RBAC = "rbac.authorization.k8s.io"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRINGS,
                            "annotations": _STRINGS}}
_INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}


@functools.cache
def _label_selector() -> dict[str, Any]:
    pod = crd_schema("ray.io/v1", "RayCluster")["properties"]["spec"]["properties"]["headGroupSpec"]["properties"][
        "template"]["properties"]["spec"]["properties"]
    terms = pod["affinity"]["properties"]["podAffinity"]["properties"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return dict(terms["items"]["properties"]["labelSelector"])


def _network_policy() -> dict[str, Any]:
    selector = _label_selector()
    peer = {"type": "object", "properties": {
        "podSelector": selector, "namespaceSelector": selector,
        "ipBlock": {"type": "object", "required": ["cidr"], "properties": {
            "cidr": {"type": "string"}, "except": {"type": "array", "items": {"type": "string"}}}}}}
    port = {"type": "object", "properties": {"protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"]},
                                             "port": _INT_OR_STRING, "endPort": {"type": "integer"}}}
    ports = {"type": "array", "items": port}
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
        "spec": {"type": "object", "required": ["podSelector"], "properties": {
            "podSelector": selector,
            "policyTypes": {"type": "array", "items": {"type": "string", "enum": ["Ingress", "Egress"]}},
            "ingress": {"type": "array", "items": {"type": "object", "properties": {
                "from": {"type": "array", "items": peer}, "ports": ports}}},
            "egress": {"type": "array", "items": {"type": "object", "properties": {
                "to": {"type": "array", "items": peer}, "ports": ports}}}}}}}


def _namespace() -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
        "spec": {"type": "object", "properties": {"finalizers": {"type": "array", "items": {"type": "string"}}}}}}


def _config_map() -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
        "data": _STRINGS, "binaryData": _STRINGS, "immutable": {"type": "boolean"}}}


def _service() -> dict[str, Any]:
    rc = crd_schema("ray.io/v1", "RayCluster")
    service = dict(rc["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]["headService"])
    return service | {"required": ["apiVersion", "kind", "metadata", "spec"]}


def _service_account() -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
        "automountServiceAccountToken": {"type": "boolean"}}}


_STRING_LIST = {"type": "array", "items": {"type": "string"}}


def _role() -> dict[str, Any]:
    rule = {"type": "object", "required": ["verbs"], "properties": {
        "apiGroups": _STRING_LIST, "resources": _STRING_LIST, "resourceNames": _STRING_LIST,
        "verbs": _STRING_LIST, "nonResourceURLs": _STRING_LIST}}
    return {"type": "object", "required": ["apiVersion", "kind", "metadata"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
        "rules": {"type": "array", "items": rule}}}


def _binding() -> dict[str, Any]:
    ref = {"type": "object", "required": ["apiGroup", "kind", "name"], "properties": {
        "apiGroup": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}}}
    subject = {"type": "object", "required": ["kind", "name"], "properties": {
        "apiGroup": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
        "namespace": {"type": "string"}}}
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "roleRef"], "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _METADATA,
        "roleRef": ref, "subjects": {"type": "array", "items": subject}}}


SCHEMAS = {("v1", "Service"): _service, ("networking.k8s.io/v1", "NetworkPolicy"): _network_policy,
           ("v1", "Namespace"): _namespace, ("v1", "ConfigMap"): _config_map,
           ("v1", "ServiceAccount"): _service_account, (f"{RBAC}/v1", "ClusterRole"): _role,
           (f"{RBAC}/v1", "Role"): _role, (f"{RBAC}/v1", "ClusterRoleBinding"): _binding,
           (f"{RBAC}/v1", "RoleBinding"): _binding}


@functools.cache
def schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The schema of a core kind the renders emit, else None (a CRD's kind, or unknown)."""
    make = SCHEMAS.get((api_version, kind))
    return make() if make else None


def rules(doc: dict[str, Any]) -> None:
    """The API server's checks beyond the schema, for the kinds in SCHEMAS; ManifestError names the field."""
    kind, meta = doc["kind"], doc["metadata"]
    name_rule = DNS1035 if kind == "Service" else DNS1123_LABEL
    if kind in ("Service", "Namespace", "NetworkPolicy") and not (len(meta["name"]) <= 63 and name_rule.fullmatch(meta["name"])):
        raise ManifestError(f"a {kind}'s name must be a DNS label, got {meta['name'][:70]!r}", field="metadata.name")
    if kind in NAMESPACED and not DNS1123_LABEL.fullmatch(meta.get("namespace", "")):
        raise ManifestError(f"a {kind} of the renders names its namespace (a DNS label)", field="metadata.namespace")
    if kind in CLUSTER_SCOPED and "namespace" in meta:
        raise ManifestError(f"a {kind} is cluster-wide: it has no namespace", field="metadata.namespace")
    if kind in ("ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding") and not (
            len(meta["name"]) <= 253 and DNS1123_SUBDOMAIN.fullmatch(meta["name"])):
        raise ManifestError(f"a {kind}'s name must be a DNS subdomain, got {meta['name'][:70]!r}", field="metadata.name")
    _labels(meta.get("labels") or {}, "metadata.labels")
    if kind == "Service":
        _service_rules(doc["spec"])
    elif kind == "NetworkPolicy":
        _policy_rules(doc["spec"])
    elif kind in ("ClusterRole", "Role"):
        _role_rules(doc)
    elif kind in ("ClusterRoleBinding", "RoleBinding"):
        _binding_rules(doc)
    elif kind == "ConfigMap":
        for key in doc.get("data") or {}:
            if not (len(key) <= 253 and CONFIG_KEY.fullmatch(key)):
                raise ManifestError(f"a ConfigMap key must be letters, digits, '-', '_' or '.', got {key[:70]!r}",
                                    field="data")


def _labels(labels: dict[str, str], field: str) -> None:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and not (len(prefix) <= 253 and DNS1123_SUBDOMAIN.fullmatch(prefix))) or not (
                0 < len(name) <= 63 and LABEL_NAME.fullmatch(name)):
            raise ManifestError(f"invalid label key {key[:80]!r}", field=field)
        if not (len(value) <= 63 and (value == "" or LABEL_NAME.fullmatch(value))):
            raise ManifestError(f"invalid label value {value[:80]!r} for {key[:80]!r}", field=field)


def _port_number(value: Any, field: str) -> None:
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ManifestError(f"a port must be 1 to 65535, got {value}", field=field)
    elif not (len(value) <= 15 and IANA_SVC_NAME.fullmatch(value) and re.search(r"[a-z]", value)):
        raise ManifestError(f"a named port is 1-15 of a-z, 0-9 and '-', with a letter, got {value[:40]!r}", field=field)


def _service_rules(spec: dict[str, Any]) -> None:
    kind = spec.get("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        raise ManifestError(f"a Service's type is ClusterIP, NodePort, LoadBalancer or ExternalName, got {kind!r}",
                            field="spec.type")
    _labels(spec.get("selector") or {}, "spec.selector")
    ports = spec.get("ports") or []
    if not ports and kind != "ExternalName":
        raise ManifestError("a Service needs at least one port", field="spec.ports")
    for i, port in enumerate(ports):
        _port_number(port["port"], f"spec.ports[{i}].port")
        _port_number(port.get("targetPort", port["port"]), f"spec.ports[{i}].targetPort")
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            raise ManifestError("a port's protocol is TCP, UDP or SCTP", field=f"spec.ports[{i}].protocol")
        if len(ports) > 1 and not port.get("name"):
            raise ManifestError("every port of a Service with several is named", field=f"spec.ports[{i}].name")


def _policy_rules(spec: dict[str, Any]) -> None:
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            at = f"spec.{direction}[{i}]"
            for j, port in enumerate(rule.get("ports") or []):
                if "port" in port:
                    _port_number(port["port"], f"{at}.ports[{j}].port")
            for j, peer in enumerate(rule.get(peers_key) or []):
                if "ipBlock" in peer and set(peer) != {"ipBlock"}:
                    raise ManifestError("an ipBlock peer may not have selectors too", field=f"{at}.{peers_key}[{j}]")
                if "ipBlock" in peer:
                    _ip_block(peer["ipBlock"], f"{at}.{peers_key}[{j}].ipBlock")
                for sel in ("podSelector", "namespaceSelector"):
                    _labels((peer.get(sel) or {}).get("matchLabels") or {}, f"{at}.{peers_key}[{j}].{sel}")
                if not peer:
                    raise ManifestError("a peer names pods, namespaces or an ipBlock", field=f"{at}.{peers_key}[{j}]")
    types = spec.get("policyTypes") or []
    if len(set(types)) != len(types):
        raise ManifestError("policyTypes lists each type once", field="spec.policyTypes")


def _ip_block(block: dict[str, Any], field: str) -> None:
    try:
        cidr = ipaddress.ip_network(block["cidr"])
        excepted = [ipaddress.ip_network(e) for e in block.get("except") or []]
    except ValueError as exc:
        raise ManifestError(f"not a CIDR: {exc}", field=field) from None
    for e in excepted:
        if e.version != cidr.version or not e.subnet_of(cidr):  # type: ignore[arg-type]  # same version, checked first; mypy cannot pair the two unions
            raise ManifestError(f"except {e} must lie inside {cidr}", field=f"{field}.except")


def _role_rules(doc: dict[str, Any]) -> None:
    for i, rule in enumerate(doc.get("rules") or []):
        at = f"rules[{i}]"
        if not rule["verbs"] or any(v not in VERBS for v in rule["verbs"]):
            raise ManifestError(f"a rule's verbs are some of {', '.join(VERBS)}, got {rule['verbs']}", field=f"{at}.verbs")
        if "nonResourceURLs" in rule and doc["kind"] == "Role":
            raise ManifestError("a Role (namespaced) cannot grant nonResourceURLs", field=f"{at}.nonResourceURLs")
        if "nonResourceURLs" not in rule and not (rule.get("apiGroups") is not None and rule.get("resources")):
            raise ManifestError("a resource rule names its apiGroups and resources", field=at)


def _binding_rules(doc: dict[str, Any]) -> None:
    ref = doc["roleRef"]
    kinds = ("ClusterRole",) if doc["kind"] == "ClusterRoleBinding" else ("ClusterRole", "Role")
    if ref["apiGroup"] != RBAC or ref["kind"] not in kinds:
        raise ManifestError(f"a {doc['kind']}'s roleRef is a {' or '.join(kinds)} of {RBAC}", field="roleRef")
    for i, subject in enumerate(doc.get("subjects") or []):
        at = f"subjects[{i}]"
        if subject["kind"] not in ("ServiceAccount", "User", "Group"):
            raise ManifestError("a subject is a ServiceAccount, User or Group", field=f"{at}.kind")
        if subject["kind"] == "ServiceAccount" and not DNS1123_LABEL.fullmatch(subject.get("namespace", "")):
            raise ManifestError("a ServiceAccount subject names its namespace", field=f"{at}.namespace")
