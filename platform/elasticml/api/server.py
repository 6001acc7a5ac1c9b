"""The API server: `POST /v1/<route>` for every route of the scheduler's declared door.

Who owns what: the door owns who may do what; this server owns only HTTP. Each request carries
its caller's credential as `Authorization: Bearer eml1.NAME.SECRET`, which the server hands to the
door unread (the door verifies it, checks the caller's role and ownership, and audits). The
server adds what HTTP needs: a bounded body (413), JSON errors that name the field and never a
stack trace, limits per credential and per client address (429 with Retry-After), and
`/openapi.json` built from the request types. No route answers without a credential except
`/healthz`.

Given the cluster's CA (`node_signer`, on the head only), it also signs workers' Ray TLS
certificates: `POST /v1/nodes/certificate` with `{"csr": PEM}`, for the node agent (or an admin)
only, and only for the address the request came from (`provision/node_certs.py`).

Status codes: 400 a malformed or invalid request (the field named), 401 no or a malformed
credential, 403 refused by the door, 404 no such route, 409 a placement refused (budget,
residency, deadline), 408 a body that did not arrive in time, 413 a body too large, 429 too many
requests, 503 the scheduler unreachable (or, past the bound on connections, the server busy).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse

from elasticml.api import dashboard, wire
from elasticml.errors import AccessDenied, AuthError, ConfigError, ElasticMLError, PlacementRefused, SchedulerNotRunning
from elasticml.scheduler.identity import name_of
from elasticml.scheduler.requests import ROUTES
from elasticml.secret_file import digest

if TYPE_CHECKING:
    from pathlib import Path

    from elasticml.provision.node_certs import NodeSigner

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
"""A request body's bound: a spec is well under 2 KiB."""
BODY_TIMEOUT_S = 10.0
"""A request body arrives whole within this or is answered 408: a client that declares a body and sends
it slowly holds a connection, not the server."""
SERVER_OPTIONS: dict[str, Any] = {
    # The caller's address is the socket's peer: the certificate route signs for it and the limiter counts
    # by it, so no header may rename it (uvicorn trusts X-Forwarded-For from 127.0.0.1 by default).
    "proxy_headers": False, "forwarded_allow_ips": "",
    # Connections are bounded in number and in idle time; past the bound a request is answered 503.
    "limit_concurrency": 1024, "timeout_keep_alive": 5, "h11_max_incomplete_event_size": 16 * 1024,
}
"""uvicorn's settings for the API server wherever it runs (`api serve`, the actor on an AWS head)."""
MAX_BUCKETS = 10_000
"""Rate-limit buckets kept (the least recently used go first), so a flood of made-up keys cannot grow memory."""

def _csp() -> str:
    """Only the page's own script and style run, and it talks to this server only."""
    import base64
    import re

    def source_hash(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", dashboard.PAGE, re.S).group(1)  # type: ignore[union-attr]  # the constant page holds each tag asked for
        return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"

    return (f"default-src 'none'; connect-src 'self'; script-src {source_hash('script')}; style-src {source_hash('style')}; "
            "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


PAGE_HEADERS = {"Content-Security-Policy": _csp(), "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store"}

Call = Callable[[str, str, dict[str, Any]], Any]
"""(credential, route, fields) -> the door's answer: the actor over Ray, or a door in process (tests)."""


class Limiter:
    """Token buckets: `rate` requests a second per key, bursts of `burst`."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_s(self, key: str) -> float:
        """0 when the request may go now (and it is counted); else the seconds until it may."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1 - tokens) / self.rate
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait


async def _read_body(request: Request) -> bytearray | None:
    """The body, or None past MAX_BODY_BYTES (whatever Content-Length said)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            return None
    return raw


def error(status: int, kind: str, message: str, *, field: str | None = None, details: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": kind, "message": message[:1000]}
    if field:
        body["field"] = field[:80]
    if details:
        body["details"] = {k: str(v)[:500] for k, v in details.items()}
    return JSONResponse(body, status_code=status, headers=headers)


DETAILS = {AccessDenied: ("who", "action", "reason"), PlacementRefused: ("workload", "reason")}
"""The fields of an error that the client builds it back from."""


def status_of(exc: ElasticMLError) -> tuple[int, str]:
    for kind, status in ((AccessDenied, 403), (AuthError, 401), (PlacementRefused, 409), (SchedulerNotRunning, 503),
                         (ConfigError, 400)):
        if isinstance(exc, kind):
            return status, kind.__name__
    return 400, type(exc).__name__


SERVER_ROUTES: dict[str, tuple[str, str, bool, str]] = {
    "jobs/submit": ("jobs", "submit", True, "submit a training job of the platform's entrypoint"),
    "jobs/status": ("jobs", "status", False, "a job's status"),
    "jobs/logs": ("jobs", "logs", False, "a job's logs, credentials redacted"),
    "jobs/stop": ("jobs", "stop", False, "stop a job"),
    "jobs/list": ("jobs", "list", False, "the caller's jobs"),
    "apps/deploy": ("apps", "deploy", True, "deploy or update a Serve app from a ServeConfig"),
    "apps/status": ("apps", "status", False, "an app's Serve status and route"),
    "apps/list": ("apps", "list", False, "the caller's apps"),
    "apps/delete": ("apps", "delete", True, "delete an app"),
    "apps/keys/mint": ("apps", "mint_key", True, "a new API key for an app, shown once"),
    "apps/keys/list": ("apps", "list_keys", False, "an app's key ids"),
    "apps/keys/revoke": ("apps", "revoke_key", True, "revoke an app's key"),
}
"""The server's own routes (beyond the door's): path -> (jobs or apps, its method, whether the method
takes the caller's credential to act as it, summary). Each runs after the door has named the caller."""


def build_app(call: Call, *, jobs: Any = None, apps: Any = None, node_signer: NodeSigner | None = None, rate_per_s: float = 200.0, burst: float = 400.0, per_address_per_s: float = 2000.0,
              clock: Callable[[], float] = time.monotonic) -> FastAPI:
    app = FastAPI(title="elasticml", version="1", description=__doc__, docs_url=None, redoc_url=None)
    per_credential = Limiter(rate_per_s, burst, clock)
    per_address = Limiter(per_address_per_s, 2 * per_address_per_s, clock)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        """The dashboard (it asks for the credential itself; its data come from the API)."""
        return HTMLResponse(dashboard.PAGE, headers=PAGE_HEADERS)

    async def serve(route: str, request: Request, handle: Callable[[str, Any], Any]) -> JSONResponse:
        """The checks every route shares, then `handle(credential, body)` in a worker thread."""
        address = request.client.host if request.client else "?"
        wait = per_address.wait_s(address)
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not wait:
            if name_of(token) is None:
                return error(401, "AuthError", "send your credential as `Authorization: Bearer eml1.NAME.SECRET` "
                                               "(the file `elasticml scheduler credential add` wrote)",
                             headers={"WWW-Authenticate": "Bearer"})
            wait = per_credential.wait_s(digest(token))
        if wait:
            return error(429, "TooManyRequests", f"slow down: try again in {wait:.2f}s",
                         headers={"Retry-After": str(max(1, math.ceil(wait)))})
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return error(413, "TooLarge", f"a request body is at most {MAX_BODY_BYTES} bytes")
        try:
            raw = await asyncio.wait_for(_read_body(request), BODY_TIMEOUT_S)
        except asyncio.TimeoutError:
            return error(408, "Timeout", f"the request body did not arrive within {BODY_TIMEOUT_S:g}s")
        if raw is None:
            return error(413, "TooLarge", f"a request body is at most {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return error(400, "ConfigError", "the body is not JSON", field="body")
        except RecursionError:
            return error(400, "ConfigError", "the body nests too deeply", field="body")
        try:
            answer = await run_in_threadpool(handle, token, body)
        except ElasticMLError as exc:
            status, kind = status_of(exc)
            names = DETAILS.get(type(exc), ())
            return error(status, kind, str(exc), field=getattr(exc, "field", None),
                         details={n: getattr(exc, n) for n in names} or None)
        except (TypeError, ValueError, RecursionError) as exc:  # a value of a shape no check foresaw
            return error(400, "ConfigError", f"invalid request: {type(exc).__name__}")
        return JSONResponse({"answer": wire.encode_answer(answer)})

    def door(route: str) -> Callable[[str, Any], Any]:
        return lambda token, body: call(token, route, wire.decode_request(route, body))

    def endpoint_for(route: str, handle: Callable[[str, Any], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            return await serve(route, request, handle)
        return endpoint

    for name in ROUTES:
        app.add_api_route(
            f"/v1/{name}", endpoint_for(name, door(name)), methods=["POST"], name=name, summary=ROUTES[name].request.__doc__ or name,
            openapi_extra={"requestBody": {"required": False, "content": {
                "application/json": {"schema": wire.request_schema(name)}}},
                "security": [{"bearer": []}]},
        )

    def as_caller(path: str, handle: Callable[..., Any], needs_token: bool) -> Callable[[str, Any], Any]:
        def run(token: str, body: Any) -> Any:
            who = call(token, "whoami", {})  # the door verifies the credential (and audits a refusal)
            if who["role"] not in ("tenant", "admin"):  # a node agent's credential is on every node
                raise AccessDenied(f"{who['role']} {who['name']}", path, "jobs and apps are a tenant's (or an admin's)")
            return handle(who, token, body) if needs_token else handle(who, body)
        return run

    for path, (owner, method, needs_token, summary) in SERVER_ROUTES.items():
        target = {"jobs": jobs, "apps": apps}[owner]
        if target is None:
            continue
        app.add_api_route(f"/v1/{path}", endpoint_for(path, as_caller(path, getattr(target, method), needs_token)),
                          methods=["POST"], name=path.replace("/", "_"), summary=summary,
                          openapi_extra={"security": [{"bearer": []}]})

    if node_signer is not None:
        add_node_certificates(app, call, node_signer, serve)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(404, "NotFound", f"no such route {request.url.path[:80]}; see /openapi.json")

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return error(405, "MethodNotAllowed", "every call is a POST of a JSON body; see /openapi.json")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return error(500, "InternalError", "the server failed; its log has the details")

    return app


def add_node_certificates(app: FastAPI, call: Call, signer: NodeSigner,
                          serve: Callable[[str, Request, Callable[[str, Any], Any]], Awaitable[JSONResponse]]) -> None:
    """`POST /v1/nodes/certificate`: a worker's Ray TLS certificate, for the address it asks from."""
    from elasticml.provision.node_certs import ROUTE

    def sign_for(peer: str) -> Callable[[str, Any], Any]:
        def run(token: str, body: Any) -> Any:
            who = call(token, "whoami", {})  # the door verifies the credential (and audits a refusal)
            if who["role"] not in ("agent", "admin"):  # a tenant's pods have Ray TLS of their own CA
                raise AccessDenied(f"{who['role']} {who['name']}", ROUTE, "node certificates are the node agent's")
            if type(body) is not dict or set(body) != {"csr"}:
                raise ConfigError("the body must be {\"csr\": PEM} and nothing else", field="body")
            certificate = signer.sign(body["csr"], peer)
            log.info("signed a node certificate for %s at the request of %s %s", peer, who["role"], who["name"])
            return {"certificate": certificate, "ca_certificate": signer.ca_pem}
        return run

    async def endpoint(request: Request) -> JSONResponse:
        return await serve(ROUTE, request, sign_for(request.client.host if request.client else "?"))

    app.add_api_route(f"/v1/{ROUTE}", endpoint, methods=["POST"], name=ROUTE.replace("/", "_"),
                      summary="this node's Ray TLS certificate, signed by the cluster's CA for its own address",
                      openapi_extra={"security": [{"bearer": []}]})


def cluster_app(address: str | None = None, *, with_jobs: bool = True, node_ca: Path | None = None) -> FastAPI:
    """The server of a Ray cluster (this process's, or the one at `address`): the door over Ray and, with
    `with_jobs`, the tenants' jobs and apps (where the process shares the head's ELASTICML_HOME); with
    `node_ca` (the cluster CA's folder, on the head), workers' certificates."""
    from elasticml.api.apps import server_apps
    from elasticml.api.jobs import server_jobs
    from elasticml.provision.node_certs import NodeSigner

    signer = NodeSigner(node_ca) if node_ca is not None else None  # refuse a missing CA before Ray is touched
    call = ray_call(address)
    if not with_jobs:
        return build_app(call, node_signer=signer)
    jobs = server_jobs()
    return build_app(call, jobs=jobs, apps=server_apps(jobs, call), node_signer=signer)


def ray_call(address: str | None = None) -> Call:
    """The scheduler actor's door over a Ray connection (the server's; it holds the Ray token)."""
    import ray

    from elasticml.scheduler.actor import ACTOR_NAME, NAMESPACE
    from elasticml.scheduler.client import RayTransport

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.ERROR)
    try:
        handle = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        raise SchedulerNotRunning(ray.get_runtime_context().gcs_address) from None

    def call(token: str, route: str, fields: dict[str, Any]) -> Any:
        return RayTransport(handle, token)(route, fields)

    return call
