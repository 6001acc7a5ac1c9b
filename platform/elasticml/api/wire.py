"""Every route's request and answer as JSON, derived from the declared table (scheduler/requests.py).

A request body is a JSON object of the request's fields; a spec or a tenant policy is an object
of its own fields, built again through its strict constructor (unknown fields refused, every
value checked). Answers are plain JSON; a placement and vended storage credentials are objects
the client builds back into their types.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from pydantic import TypeAdapter

from elasticml.dataconf import from_mapping
from elasticml.errors import ConfigError
from elasticml.scheduler.capacity import Allocation
from elasticml.scheduler.requests import ROUTES, Request
from elasticml.scheduler.spec import Placement, TenantPolicy, WorkloadSpec
from elasticml.storage import S3Credentials

NESTED = {"spec": WorkloadSpec, "policy": TenantPolicy}
"""Request fields whose values are objects of a typed config."""
ANSWERS: dict[str, type] = {"place": Placement, "placement": Placement, "storage_credentials": S3Credentials}
"""Routes whose answer is an object of a type (or null); every other answer is plain JSON."""


def request_schema(route: str) -> dict[str, Any]:
    """The JSON schema of a route's request body (for /openapi.json)."""
    return TypeAdapter(ROUTES[route].request).json_schema(mode="validation")


def encode_request(request: Request) -> dict[str, Any]:
    body = {}
    for name, value in request.wire().items():
        body[name] = value.to_dict() if isinstance(value, WorkloadSpec) else _plain(value)
    return body


def decode_request(route: str, body: Any) -> dict[str, Any]:
    """A JSON body as the route's fields with their types (the door then checks every value)."""
    if type(body) is not dict:
        raise ConfigError("the body must be a JSON object of the call's fields", field="body")
    out = dict(body)
    for name, cls in NESTED.items():
        if name in out and name in {f.name for f in fields(ROUTES[route].request)}:  # type: ignore[arg-type]  # every Request subclass is a dataclass; the base is not
            raw = out[name]
            if type(raw) is dict and type(raw.get("regions", [])) is list:
                raw = {**raw, "regions": tuple(raw.get("regions", ()))}
            out[name] = WorkloadSpec.from_dict(raw, source=name) if cls is WorkloadSpec else from_mapping(cls, raw, source=name)
    return out


def encode_answer(value: Any) -> Any:
    if isinstance(value, Placement):
        return value.to_dict()
    if isinstance(value, S3Credentials):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return _plain(value)


def decode_answer(route: str, value: Any) -> Any:
    kind = ANSWERS.get(route)
    if kind is None or value is None:
        return value
    if kind is Placement:
        return Placement(workload=value["workload"], state=value["state"], reason=value["reason"],
                         allocations=tuple(Allocation(**a) for a in value["allocations"]),
                         ray_options=value["ray_options"], scaling_config=value["scaling_config"], epoch=value["epoch"])
    return kind(**value)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value
