"""The HTTP surface shared by the completion app and its routers: request and response models, the
replica's `Ingress` (API keys: 401, body limit: 413, the hot endpoints without FastAPI's per-request
work), quiet 422s, and how a backend's refusal crosses a handle."""

# No `from __future__ import annotations`: FastAPI must see the request models
# as classes, not strings, to read them from the body.
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

DEFAULT_BODY_LIMIT = 65536


@dataclass(frozen=True)
class HotRoute:
    """An endpoint the ingress answers itself: the body as `model`, then `handler(request, tenant)`."""

    model: type[BaseModel]
    handler: Callable[[Any, str | None], Awaitable[BaseModel]]


UNAUTHORIZED = "missing or unknown API key: send Authorization: Bearer <key> or X-API-Key: <key>"
_JSON = (b"content-type", b"application/json")


class Ingress:
    """A replica's ASGI app: keys, body limit and the hot endpoints here; everything else by FastAPI.

    In order, for every HTTP request:
    - on /v1/ paths with keys set, 401 from the headers alone: an unknown caller's body is never
      read, parsed or validated, so it learns nothing of the schema and costs no parsing;
    - 413 for a declared body over `body_limit`; a body without a declared length (chunked) is
      read and counted first, then replayed whole;
    - a hot route (`hot`, by method and path) with a JSON body that its model accepts is answered
      here: `json.loads` then `model.model_validate`, what FastAPI does with a body parameter,
      the handler, and the answer written as JSON. Anything else there (another content type,
      a body that does not parse or validate) goes to FastAPI with the body replayed, so every
      error is FastAPI's own (the same 400/422, the same quiet detail);
    - every other request goes to `app` unchanged, which keeps OpenAPI, /docs and the cold
      endpoints.
    FastAPI's routing, dependency injection and response-model validation cost more than the
    whole Serve hop of a request (benchmarks/serve_http.py measures both); the hot routes skip them.
    """

    def __init__(self, app: Any, *, keys: Any, body_limit: int = DEFAULT_BODY_LIMIT,
                 hot: dict[tuple[str, str], HotRoute] | None = None) -> None:
        self.app = app
        self.keys = keys
        self.body_limit = body_limit
        self.hot = dict(hot or {})
        self._handlers: dict[type, Any] = {}

    def add_exception_handler(self, exc_class: type, handler: Any) -> None:
        """Serve registers its own errors (backpressure, an unavailable deployment) on the ASGI app: the
        hot routes answer them as FastAPI would."""
        self._handlers[exc_class] = handler
        self.app.add_exception_handler(exc_class, handler)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        headers = dict(scope["headers"])
        tenant = None
        if path.startswith("/v1/") and not self.keys.open:
            tenant = self.keys.tenant_for(headers.get(b"authorization", b"").decode("latin-1") or None,
                                          headers.get(b"x-api-key", b"").decode("latin-1") or None)
            if tenant is None:
                return await _send_json(send, 401, {"detail": UNAUTHORIZED}, {"WWW-Authenticate": "Bearer"})
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            return await _send_json(send, 413, {"detail": f"body is {declared.decode()} bytes; the limit is "
                                                          f"{self.body_limit}"})
        route = self.hot.get((scope["method"], path))
        if route is None and (declared is not None or scope["method"] not in ("POST", "PUT", "PATCH")):
            return await self.app(scope, receive, send)  # the server's framing holds a declared length
        messages = await self._read_body(receive, send)
        if messages is None:
            return
        if route is not None:
            request = _parse(route.model, headers, messages)
            if request is not None:
                return await self._answer(route, request, tenant, scope, send)
        pending = iter(messages)

        async def replay() -> dict:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Any, send: Any) -> list[dict] | None:
        """The request's messages up to the end of its body; None once a 413 is sent."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.body_limit:
                await _send_json(send, 413, {"detail": f"body exceeds the limit of {self.body_limit} bytes"})
                return None
            if not message.get("more_body", False):
                return messages

    async def _answer(self, route: HotRoute, request: BaseModel, tenant: str | None, scope: dict, send: Any) -> None:
        try:
            reply = await route.handler(request, tenant)
        except StarletteHTTPException as exc:
            return await _send_json(send, exc.status_code, {"detail": exc.detail}, exc.headers)
        except Exception as exc:
            handler = next((h for cls, h in self._handlers.items() if isinstance(exc, cls)), None)
            if handler is None:
                await _send_json(send, 500, {"detail": "internal error"})
                raise  # to Serve, which logs it as it logs FastAPI's
            response = handler(Request(scope), exc)
            return await response(scope, _no_body, send)
        body = reply.model_dump_json().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def route_path(scope: dict) -> str:
    """The path within the app: Serve puts the route prefix in root_path and leaves it on path."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):] or "/"
    return path


def _parse(model: type[BaseModel], headers: dict[bytes, bytes], messages: list[dict]) -> BaseModel | None:
    """The body as `model` when it is JSON that the model accepts, else None (FastAPI will say why)."""
    kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if kind != b"application/json" or messages[-1]["type"] != "http.request":
        return None
    body = b"".join(m.get("body", b"") for m in messages)
    try:
        return model.model_validate(json.loads(body))
    except Exception:  # malformed, too deep, not the model: each gets FastAPI's own answer
        return None


async def _no_body() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send_json(send: Any, status: int, content: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field and the rule, without echoing the (possibly large or private) input back."""
    detail = [{k: v for k, v in err.items() if k not in ("input", "url", "ctx")} for err in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


def new_api(title: str) -> FastAPI:
    """A FastAPI app with the quiet 422s; a replica serves it behind its `Ingress`."""
    app = FastAPI(title=title, version="2")
    app.exception_handler(RequestValidationError)(validation_error)
    return app


def authenticate(keys: Any, authorization: str | None, x_api_key: str | None) -> str | None:
    """The caller's tenant (None when the app has no keys); 401 when keys are set and none matches."""
    if keys.open:
        return None
    tenant = keys.tenant_for(authorization, x_api_key)
    if tenant is None:
        raise HTTPException(status_code=401, detail=UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return tenant


MIN_TEMPERATURE = 0.01
"""Below this, logits / temperature overflow to inf and sampling is undefined; 0 means greedy."""
MAX_SEED = 2**32 - 1


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=4096, description="Text to continue.")
    max_tokens: int = Field(32, ge=1, le=512, description="Bytes to generate.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False,
                               description=f"0 = greedy, deterministic; otherwise {MIN_TEMPERATURE} to 2.")
    # torch's CPU generator keeps only a seed's low 32 bits: a larger seed would silently
    # share its stream with another one, and 2**64 and above overflow.
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Sampling seed (0 to 2**32 - 1), for reproducible sampled output.")

    @field_validator("temperature")
    @classmethod
    def _greedy_or_sampled(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value


class CompletionResponse(BaseModel):
    completion: str
    tokens: int
    latency_ms: float
    model_step: int
    cached: bool
    model_version: str = Field("current", description="current, or stable/canary during a canary release.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: str = Field("", max_length=4096, description="Text the continuation follows (may be empty).")
    continuation: str = Field(min_length=1, max_length=4096, description="Text whose likelihood is wanted.")


class ScoreResponse(BaseModel):
    log_likelihood: float = Field(description="Sum of log p(byte | preceding bytes), natural log.")
    tokens: int = Field(description="Bytes scored.")
    nll_per_byte: float
    model_step: int


@dataclass(frozen=True)
class Refusal:
    """A 4xx/5xx from a backend, returned rather than raised: exceptions crossing a deployment handle
    arrive wrapped in Ray's task errors, and the caller must answer the client with the same status."""

    status_code: int
    detail: Any


async def refusal_for(call: Any) -> Any:
    """Await a backend method's work, returning its HTTP error as a Refusal (the backend side)."""
    try:
        return await call
    except HTTPException as exc:
        return Refusal(exc.status_code, exc.detail)


def answer_or_raise(reply: Any) -> Any:
    """A backend's answer, or its Refusal raised as the HTTP error it stands for (the router side)."""
    if isinstance(reply, Refusal):
        raise HTTPException(status_code=reply.status_code, detail=reply.detail)
    return reply
