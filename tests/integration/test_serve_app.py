"""The completion Serve app over real HTTP on the local cluster."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from elasticml.cluster.local import free_port
from elasticml.models import SIZES, build_model
from elasticml.serve.generate import generate
from elasticml.train.checkpoint import write_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(local_cluster, tmp_path_factory):
    from ray import serve

    from elasticml.serve.completion import build_app

    torch.manual_seed(123)
    model = build_model("tiny").eval()
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_x"
    write_checkpoint(folder, model_state=model.state_dict(), optim_state=None, model_config=SIZES["tiny"], step=42)
    local_cluster.require_info().connect()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"checkpoint": str(folder), "market": "reserved"}), name="completion", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield client, model
    serve.shutdown()


def test_answers_match_the_loaded_checkpoint(served):
    client, model = served
    for prompt in ["def main(", "héllo wörld"]:
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 16})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = generate(model, prompt.encode(), max_tokens=16).decode("utf-8", errors="replace")
        assert body["completion"] == expected
        assert body["tokens"] == 16 and body["model_step"] == 42 and body["latency_ms"] > 0


def test_replica_runs_on_the_market_it_was_placed_on(served):
    client, _ = served
    health = client.get("/healthz").json()
    assert health["market"] == "reserved" and health["node_type"] == "cpu_reserved"


@pytest.mark.parametrize(
    "body, words",
    [
        ({"prompt": "", "max_tokens": 4}, "at least 1 character"),
        ({"prompt": "x", "max_tokens": 0}, "greater than or equal to 1"),
        ({"prompt": "x", "max_tokens": 100000}, "less than or equal to 512"),
        ({"prompt": "x", "max_tokens": 200}, "below the model's context"),
        ({"prompt": "x", "temperature": -1}, "greater than or equal to 0"),
        ({"prompt": 5}, "valid string"),
        ({"max_tokens": 3}, "Field required"),
        ({"prompt": "x", "tokens": 3}, "Extra inputs are not permitted"),
    ],
)
def test_bad_input_gets_a_422_that_says_what_is_wrong(served, body, words):
    client, _ = served
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 422
    assert words in r.text


def test_non_json_body_is_a_4xx_and_the_app_keeps_serving(served):
    client, _ = served
    r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_openapi_schema_is_published(served):
    client, _ = served
    schema = client.get("/openapi.json").json()
    assert "/v1/completions" in schema["paths"]
    assert "CompletionRequest" in schema["components"]["schemas"]
