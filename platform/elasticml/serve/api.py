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
from pydantic import BaseModel, ConfigDict, Field

# The replica's body limit travels in its environment (set by build_app): the middleware runs before
# the replica object exists for the request, and the app may be pickled by value onto the replica.
BODY_LIMIT_ENV = "ELASTICML_SERVE_MAX_BODY_BYTES"


async def limit_body_size(request: Request, call_next):  # type: ignore[no-untyped-def]
    """413 before parsing: a declared or actual body over the limit is refused, the replica unharmed."""
    limit = int(os.environ.get(BODY_LIMIT_ENV, "65536"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return JSONResponse(status_code=413, content={"detail": f"body is {declared} bytes; the limit is {limit}"})
    if request.method == "POST" and len(await request.body()) > limit:
        return JSONResponse(status_code=413, content={"detail": f"body exceeds the limit of {limit} bytes"})
    return await call_next(request)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the field and the rule, without echoing the (possibly large or private) input back."""
    detail = [{k: v for k, v in err.items() if k not in ("input", "url", "ctx")} for err in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


def new_api(title: str) -> FastAPI:
    """A FastAPI app with the body limit (413) and the quiet 422s: the completion app and its routers."""
    app = FastAPI(title=title, version="2")
    app.middleware("http")(limit_body_size)
    app.exception_handler(RequestValidationError)(validation_error)
    return app


def authenticate(keys: Any, authorization: str | None, x_api_key: str | None) -> str | None:
    """The caller's tenant (None when the app has no keys); 401 when keys are set and none matches."""
    if keys.open:
        return None
    tenant = keys.tenant_for(authorization, x_api_key)
    if tenant is None:
        raise HTTPException(status_code=401, detail="missing or unknown API key: send Authorization: Bearer "
                            "<key> or X-API-Key: <key>", headers={"WWW-Authenticate": "Bearer"})
    return tenant


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=4096, description="Text to continue.")
    max_tokens: int = Field(32, ge=1, le=512, description="Bytes to generate.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy, deterministic.")
    seed: int | None = Field(None, ge=0, description="Sampling seed, for reproducible sampled output.")


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
