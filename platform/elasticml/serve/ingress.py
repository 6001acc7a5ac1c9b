"""The HTTP surface of the completion app, declared once: its routes, its key check and its body limit.

Three deployments face clients: the backend (`completion.Completer`), the spot-aware `pools.PoolRouter`
and the `canary.CanaryRouter`. Each is a *surface*: an object holding a `Gate` (API keys and the body
limit) and the handlers that its routes name. None of them declares routes or checks keys itself;
`Ingress(surface, ...)` builds the replica's ASGI app from `SHARED` (the routes every surface serves)
plus the surface's own routes, and is the only place a key is checked.

Glossary:
- route: one row of a table (`Route`): method, path, the surface's handler by name, whether a key is
  needed, the body model it reads, and whether the ingress answers it itself (`hot`);
- hot route: answered by `Ingress` without FastAPI's per-request work (routing, dependency injection,
  response-model validation cost more than the whole Serve hop; benchmarks/serve_http.py);
- cold route: answered by the FastAPI app built from the same table (OpenAPI, /docs, every 4xx);
- handler: `handler(tenant)`, or `handler(body, tenant)` for a route with a body; sync or async.
  `tenant` is the caller the key named (None on an app without keys, and on open routes).
"""

# No `from __future__ import annotations`: FastAPI must see the request models
# as classes, not strings, to read them from the body.
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from elasticml.serve.api import (
    CompletionRequest,
    CompletionResponse,
    ScoreRequest,
    ScoreResponse,
)
from elasticml.serve.auth import KeyRing

if TYPE_CHECKING:
    from elasticml.serve.config import ServeConfig

DEFAULT_BODY_LIMIT = 65536
UNAUTHORIZED = "missing or unknown API key: send Authorization: Bearer <key> or X-API-Key: <key>"
KEYED = "/v1/"
"""Every path under it needs a key, a path no route declares included: a caller without a key learns
nothing of which exist (401 before 404) and no body of theirs is read."""
TENANT = "elasticml.tenant"
"""The scope key under which the ingress hands a cold route the tenant it checked."""
_JSON = (b"content-type", b"application/json")


@dataclass(kw_only=True, frozen=True)
class Route:
    method: Literal["GET", "POST"]
    path: str
    handler: str
    """The surface's method that answers it."""
    auth: bool = True
    """A key is needed (checked once, by the ingress, before the body is read)."""
    body: type[BaseModel] | None = None
    """The request body's model; its size is bounded by the surface's `Gate.body_limit`."""
    response: type[BaseModel] | None = None
    hot: bool = False
    """Answered by the ingress itself when the body is JSON that `body` accepts."""

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"a route's path starts with /, got {self.path!r}")
        if self.hot and self.body is None:
            raise ValueError(f"{self.path}: a hot route reads a body; give its model")
        if self.path.startswith(KEYED) and not self.auth:
            raise ValueError(f"{self.path}: every {KEYED} path needs a key; put an open route outside it")


SHARED: tuple[Route, ...] = (
    Route(method="POST", path="/v1/completions", handler="complete", body=CompletionRequest,
          response=CompletionResponse, hot=True),
    Route(method="POST", path="/v1/score", handler="score", body=ScoreRequest, response=ScoreResponse, hot=True),
)
"""The routes every surface serves; a surface adds its own after them."""

HEALTHZ = Route(method="GET", path="/healthz", handler="healthz", auth=False)
"""Open, for load balancers: a handler for it says `{"status": "ok"}` and nothing more."""


@dataclass(kw_only=True, frozen=True)
class Gate:
    """Who may call a surface and how much they may send. A surface replaces its gate whole (the canary
    router, when its keys or limits change in place); the ingress reads it at every request."""

    keys: KeyRing
    body_limit: int = DEFAULT_BODY_LIMIT
    """Bytes a request body may have, declared or counted; more get 413."""

    def __post_init__(self) -> None:
        if isinstance(self.body_limit, bool) or not isinstance(self.body_limit, int) or self.body_limit < 1:
            raise ValueError(f"body_limit must be a positive number of bytes, got {self.body_limit!r}")

    @classmethod
    def of(cls, config: "ServeConfig") -> "Gate":
        """The gate a ServeConfig describes (its digests, already read from any key file, and its limit)."""
        return cls(keys=KeyRing(config.api_keys), body_limit=config.max_body_bytes)


class Ingress:
    """A replica's ASGI app: keys, body limit and the hot routes here; everything else by FastAPI.

    In order, for every HTTP request:
    - with keys set, a route that needs one (any path under /v1/) gets 401 from the headers alone:
      an unknown caller's body is never read, parsed or validated, so it learns nothing of the schema
      and costs no parsing. The tenant found is handed on: to a hot handler, and to a cold route in
      the request's scope, so that no route checks the key again;
    - 413 for a declared body over the gate's `body_limit`; a body without a declared length (chunked)
      is read and counted first, then replayed whole;
    - a hot route with a JSON body that its model accepts is answered here: `json.loads` then
      `model.model_validate`, what FastAPI does with a body parameter, the handler, and the answer
      written as JSON. Anything else there (another content type, a body that does not parse or
      validate) goes to FastAPI with the body replayed, so every error is FastAPI's own (the same
      400/422, the same quiet detail);
    - every other request goes to the FastAPI app built from the same routes, which keeps OpenAPI,
      /docs and the cold routes.
    """

    def __init__(self, surface: Any, *, title: str, routes: tuple[Route, ...] = ()) -> None:
        """`routes`: the surface's own, served after `SHARED`; each names a handler the surface has."""
        self.surface = surface
        self.routes = (*SHARED, *routes)
        self.table: dict[tuple[str, str], tuple[Route, Callable[..., Any]]] = {}
        for route in self.routes:
            handler = getattr(surface, route.handler, None)
            if not callable(handler):
                raise TypeError(f"{route.method} {route.path} names {route.handler!r}, which "
                                f"{type(surface).__name__} lacks")
            if (route.method, route.path) in self.table:
                raise ValueError(f"{route.method} {route.path} is declared twice")
            self.table[(route.method, route.path)] = (route, handler)
        self.app = fastapi_app(title, [(route, handler) for route, handler in self.table.values()])
        self._handlers: dict[type, Any] = {}
        self._reading: dict[str, int] = {}

    def reading(self, handler: str) -> int:
        """Requests to `handler`'s hot route that are in this replica with their body still being read
        (from the proxy, a round trip away): on their way to the handler, which may wait for them."""
        return self._reading.get(handler, 0)

    def add_exception_handler(self, exc_class: type, handler: Any) -> None:
        """Serve registers its own errors (backpressure, an unavailable deployment) on the ASGI app: the
        hot routes answer them as FastAPI would."""
        self._handlers[exc_class] = handler
        self.app.add_exception_handler(exc_class, handler)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        gate: Gate = self.surface.gate
        path = route_path(scope)
        headers = dict(scope["headers"])
        found = self.table.get((scope["method"], path))
        tenant = None
        if (found[0].auth if found else path.startswith(KEYED)) and not gate.keys.open:
            tenant = gate.keys.tenant_for(headers.get(b"authorization", b"").decode("latin-1") or None,
                                          headers.get(b"x-api-key", b"").decode("latin-1") or None)
            if tenant is None:
                return await _send_json(send, 401, {"detail": UNAUTHORIZED}, {"WWW-Authenticate": "Bearer"})
        scope[TENANT] = tenant
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > gate.body_limit:
            return await _send_json(send, 413, {"detail": f"body is {declared.decode()} bytes; the limit is "
                                                          f"{gate.body_limit}"})
        hot = found if found and found[0].hot else None
        if hot is None and (declared is not None or scope["method"] not in ("POST", "PUT", "PATCH")):
            return await self.app(scope, receive, send)  # the server's framing holds a declared length
        if hot is not None:
            self._reading[hot[0].handler] = self._reading.get(hot[0].handler, 0) + 1
        try:
            messages = await _read_body(receive, send, gate.body_limit)
        finally:
            if hot is not None:
                self._reading[hot[0].handler] -= 1
        if messages is None:
            return
        if hot is not None:
            request = _parse(hot[0].body, headers, messages)  # type: ignore[arg-type]  # a hot Route has a body model (Route refuses one without)
            if request is not None:
                return await self._answer(hot[1], request, tenant, scope, send)
        pending = iter(messages)

        async def replay() -> dict[str, Any]:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    async def _answer(self, handler: Callable[..., Any], request: BaseModel, tenant: str | None, scope: dict[str, Any],
                      send: Any) -> None:
        try:
            reply = await handler(request, tenant)
        except StarletteHTTPException as exc:
            return await _send_json(send, exc.status_code, {"detail": exc.detail}, exc.headers)
        except Exception as exc:
            on_error = next((h for cls, h in self._handlers.items() if isinstance(exc, cls)), None)
            if on_error is None:
                await _send_json(send, 500, {"detail": "internal error"})
                raise  # to Serve, which logs it as it logs FastAPI's
            response = on_error(Request(scope), exc)
            await response(scope, _no_body, send)
            return
        body = reply.model_dump_json().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def fastapi_app(title: str, routes: list[tuple[Route, Callable[..., Any]]]) -> FastAPI:
    """A FastAPI app with the quiet 422s and one endpoint a route, each calling its handler."""
    app = FastAPI(title=title, version="2")
    app.exception_handler(RequestValidationError)(validation_error)
    for route, handler in routes:
        app.add_api_route(route.path, _endpoint(route, handler), methods=[route.method],
                          response_model=route.response or dict)
    return app


def _endpoint(route: Route, handler: Callable[..., Any]) -> Callable[..., Any]:
    """A FastAPI endpoint for `route`: the body (if any) read by FastAPI, the tenant from the ingress."""
    async def endpoint(**params: Any) -> Any:
        tenant = params["http"].scope[TENANT] if route.auth else None  # no tenant checked: a KeyError, not open
        reply = handler(params["request"], tenant) if route.body is not None else handler(tenant)
        return await reply if inspect.isawaitable(reply) else reply

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("http", kw, annotation=Request)]
    if route.body is not None:
        params.insert(0, inspect.Parameter("request", kw, annotation=route.body))
    if route.auth:
        # Declared so that the schema tells a client where its key goes; the ingress has checked it.
        params += [inspect.Parameter(name, kw, default=Header(None), annotation=str | None)
                   for name in ("authorization", "x_api_key")]
    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # what FastAPI reads; typeshed's functions lack the attribute
    endpoint.__name__ = route.handler  # FastAPI names the operation after it
    return endpoint


def route_path(scope: dict[str, Any]) -> str:
    """The path within the app: Serve puts the route prefix in root_path and leaves it on path."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):] or "/"
    return path


async def _read_body(receive: Any, send: Any, limit: int) -> list[dict[str, Any]] | None:
    """The request's messages up to the end of its body; None once a 413 is sent."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            await _send_json(send, 413, {"detail": f"body exceeds the limit of {limit} bytes"})
            return None
        if not message.get("more_body", False):
            return messages


def _parse(model: type[BaseModel], headers: dict[bytes, bytes], messages: list[dict[str, Any]]) -> BaseModel | None:
    """The body as `model` when it is JSON that the model accepts, else None (FastAPI will say why)."""
    kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if kind != b"application/json" or messages[-1]["type"] != "http.request":
        return None
    body = b"".join(m.get("body", b"") for m in messages)
    try:
        return model.model_validate(json.loads(body))
    except Exception:  # malformed, too deep, not the model: each gets FastAPI's own answer
        return None


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send_json(send: Any, status: int, content: Any, headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field and the rule, without echoing the (possibly large or private) input back."""
    detail = [{k: v for k, v in err.items() if k not in ("input", "url", "ctx")} for err in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})
