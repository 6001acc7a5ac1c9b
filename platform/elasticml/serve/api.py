"""What the completion app's clients and its deployments exchange: the request and response models,
and how a backend's refusal crosses a handle. The routes, keys and limits are `elasticml.serve.ingress`."""

# No `from __future__ import annotations`: FastAPI must see the request models
# as classes, not strings, to read them from the body.
from dataclasses import dataclass
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    model_version: str = Field(default="current", description="current, or stable/canary during a canary release.")


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


T = TypeVar("T")


async def refusal_for(call: Awaitable[T]) -> T | Refusal:
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
