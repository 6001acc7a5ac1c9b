"""The HTTP surface shared by the completion app and its routers: request and response models,
the body limit (413), quiet 422s, API-key checks (401), and how a backend's refusal crosses a handle."""

# No `from __future__ import annotations`: FastAPI must see the request models
# as classes, not strings, to read them from the body.
import os
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

# The replica's body limit travels in its environment (set by build_app): the middleware runs before
# the replica object exists for the request, and the app may be pickled by value onto the replica.
BODY_LIMIT_ENV = "ELASTICML_SERVE_MAX_BODY_BYTES"


class BodyLimit:
    """413 before parsing: a declared or actual body over the limit is refused, the replica unharmed.

    Plain ASGI rather than FastAPI's @app.middleware("http"): that wrapper runs every request and
    response through an extra task and stream (about a millisecond a request, measured in
    benchmarks/serve_http.py). A declared Content-Length is enforced by the HTTP server's framing,
    so only a body without one (chunked) is read ahead and counted, then replayed to the app.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = int(os.environ.get(BODY_LIMIT_ENV, "65536"))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > limit:
                detail = f"body is {declared.decode()} bytes; the limit is {limit}"
                return await _too_large(scope, receive, send, detail)
            return await self.app(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await _too_large(scope, receive, send, f"body exceeds the limit of {limit} bytes")
            if not message.get("more_body", False):
                break
        pending = iter(messages)

        async def replay() -> dict:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)


_KEYRINGS: dict[str, Any] = {}
"""App title -> the KeyRing of the replica serving it in this process (one replica a process)."""
UNAUTHORIZED = "missing or unknown API key: send Authorization: Bearer <key> or X-API-Key: <key>"


def use_keys(app: FastAPI, keys: Any) -> None:
    """Called by a replica's constructor: `KeyGate` checks these keys on the app's /v1/ paths."""
    _KEYRINGS[app.title] = keys


class KeyGate:
    """401 before the body is read, parsed or validated: on /v1/ an unknown caller learns nothing of the
    schema and costs no parsing. The endpoints still ask `authenticate` for the tenant (it is cheap).

    The keyring is looked up by the app's title in this module (not held by the app object, which
    Serve may pickle by value onto the replica, away from the replica's own copy).
    """

    def __init__(self, app: Any, title: str) -> None:
        self.app = app
        self.title = title

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            keys = _KEYRINGS.get(self.title)
            if keys is not None and not keys.open:
                headers = dict(scope["headers"])
                authorization = headers.get(b"authorization", b"").decode("latin-1") or None
                api_key = headers.get(b"x-api-key", b"").decode("latin-1") or None
                if keys.tenant_for(authorization, api_key) is None:
                    response = JSONResponse(status_code=401, content={"detail": UNAUTHORIZED},
                                            headers={"WWW-Authenticate": "Bearer"})
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)


async def _too_large(scope: dict, receive: Any, send: Any, detail: str) -> None:
    await JSONResponse(status_code=413, content={"detail": detail})(scope, receive, send)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field and the rule, without echoing the (possibly large or private) input back."""
    detail = [{k: v for k, v in err.items() if k not in ("input", "url", "ctx")} for err in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


def new_api(title: str) -> FastAPI:
    """A FastAPI app with keys checked first (401), the body limit (413) and the quiet 422s: the
    completion app and its routers."""
    app = FastAPI(title=title, version="2")
    app.add_middleware(BodyLimit)
    app.add_middleware(KeyGate, title=title)  # added last: runs first
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
