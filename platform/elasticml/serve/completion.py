"""The text-completion Serve deployment: a checkpoint behind HTTP.

Endpoints: `POST /v1/completions` ({"prompt", "max_tokens", "temperature",
"seed"} -> {"completion", "tokens", "latency_ms", "model_step"}), `GET
/healthz`, and FastAPI's published OpenAPI schema at `/openapi.json`. Bad
bodies are refused with 422 and a body naming the field and the rule.

It lives in the package (not in serve_apps/) so that a replica on any node
imports it from the installed package; `serve_apps/completion.py` exposes the
builder for `serve run` / `serve deploy`.
"""

# No `from __future__ import annotations`: FastAPI must see the request model
# as a class, not a string, to read it from the body.
import time
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from elasticml import labels as L

api = FastAPI(title="elasticml completion", version="1")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=4096, description="Text to continue.")
    max_tokens: int = Field(32, ge=1, le=512, description="Bytes to generate.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy, deterministic.")
    seed: int | None = Field(None, description="Sampling seed, for reproducible sampled output.")


class CompletionResponse(BaseModel):
    completion: str
    tokens: int
    latency_ms: float
    model_step: int


@serve.deployment(max_ongoing_requests=8)
@serve.ingress(api)
class Completer:
    def __init__(self, checkpoint: str, num_threads: int = 1) -> None:
        import torch

        from elasticml.train.checkpoint import load_model

        torch.set_num_threads(num_threads)
        self.model, self.meta = load_model(checkpoint)
        self.checkpoint = checkpoint

    @api.get("/healthz")
    def healthz(self) -> dict:
        import ray

        node_labels = ray.get_runtime_context().get_node_labels()
        return {
            "status": "ok",
            "checkpoint": self.checkpoint,
            "step": self.meta["step"],
            "market": L.market_of(node_labels),
            "node_type": node_labels.get(L.NODE_TYPE),
        }

    @api.post("/v1/completions", response_model=CompletionResponse)
    def complete(self, request: CompletionRequest) -> CompletionResponse:
        from fastapi import HTTPException

        from elasticml.serve.generate import generate

        if request.max_tokens >= self.model.config.max_seq_len:
            raise HTTPException(
                status_code=422,
                detail=f"max_tokens must be below the model's context of {self.model.config.max_seq_len} bytes",
            )
        t0 = time.perf_counter()
        out = generate(
            self.model, request.prompt.encode("utf-8"), max_tokens=request.max_tokens,
            temperature=request.temperature, seed=request.seed,
        )
        return CompletionResponse(
            completion=out.decode("utf-8", errors="replace"),
            tokens=len(out),
            latency_ms=(time.perf_counter() - t0) * 1e3,
            model_step=int(self.meta["step"]),
        )


def resolve_checkpoint(spec: str) -> str:
    """A checkpoint folder, or `latest:RUN_DIR` for the newest complete checkpoint of a run."""
    from pathlib import Path

    from elasticml.errors import CheckpointError
    from elasticml.train.checkpoint import latest_checkpoint, read_meta

    if spec.startswith("latest:"):
        target = spec.removeprefix("latest:")
        run_dir = target if "://" in target else Path(target).expanduser()
        found = latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(
                f"no complete checkpoint under {run_dir}; train one first (jobs/train.py) or pass a checkpoint folder"
            )
        return str(found)
    where = spec if "://" in spec else str(Path(spec).expanduser())
    read_meta(where)  # refuse an incomplete checkpoint before any replica starts
    return where


def build_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run` / `serve deploy`: args {checkpoint, market?, num_cpus?}.

    checkpoint is a folder written by jobs/train.py, or `latest:RUN_DIR`.
    """
    if "checkpoint" not in args:
        raise ValueError("the completion app needs args.checkpoint: a checkpoint folder written by jobs/train.py")
    options: dict[str, Any] = {"num_cpus": float(args.get("num_cpus", 1))}
    market = args.get("market", "any")
    if market != "any":
        options["label_selector"] = L.selector_for(market)
    threads = max(1, int(options["num_cpus"]))
    return Completer.options(ray_actor_options=options).bind(resolve_checkpoint(str(args["checkpoint"])), threads)
