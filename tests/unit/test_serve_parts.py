"""The completion app's parts on their own: config validation, keys, cache, presets, precision."""

import pytest
import torch

from elasticml.errors import ConfigError
from elasticml.models import build_model
from elasticml.serve.auth import KeyRing, digest, new_key
from elasticml.serve.cache import ResponseCache
from elasticml.serve.config import PRESETS, ServeConfig
from elasticml.serve.precision import prepare


def cfg(**kw):
    return ServeConfig(checkpoint="/c", **kw)


@pytest.mark.parametrize("kw, field, words", [
    ({"device": "tpu"}, "device", "one of cpu, gpu"),
    ({"precision": "bf16"}, "precision", "bf16 is for GPU replicas"),
    ({"device": "gpu", "precision": "int8"}, "precision", "int8 is for CPU replicas"),
    ({"max_batch_size": 0}, "max_batch_size", r"must be in \[1, 4096\], got 0"),
    ({"max_batch_size": 64}, "max_ongoing_requests", "at least max_batch_size=64"),
    ({"request_timeout_s": 0}, "request_timeout_s", r"must be in \[0.001, 3600\], got 0"),
    ({"preset": "latency", "min_replicas": 3, "max_replicas": 2}, "max_replicas", "min_replicas <= max_replicas"),
    ({"preset": "turbo"}, "preset", "one of fixed, latency, batch"),
    ({"api_keys": {"acme": "eml_plain_key_pasted_by_mistake"}}, "api_keys", "not a sha256 hex digest"),
])
def test_bad_serve_configs_name_the_field(kw, field, words):
    with pytest.raises(ConfigError, match=words) as err:
        cfg(**kw)
    assert err.value.field == field
    assert "eml_plain_key_pasted_by_mistake" not in str(err.value)  # a key is never echoed


def test_unknown_args_are_refused_with_the_known_ones_listed():
    with pytest.raises(ConfigError, match="unknown field.*max_batch"):
        ServeConfig.from_dict({"checkpoint": "/c", "max_batch": 3})


def test_presets_and_precision_defaults():
    assert cfg().resolved_precision == "int8" and cfg(device="gpu").resolved_precision == "bf16"
    assert cfg().autoscaling_config() == {}
    latency = cfg(preset="latency", max_replicas=6).autoscaling_config()
    assert latency["max_replicas"] == 6 and latency["target_ongoing_requests"] == PRESETS["latency"]["target_ongoing_requests"]
    assert PRESETS["batch"]["target_ongoing_requests"] > PRESETS["latency"]["target_ongoing_requests"]


def test_keys_match_by_digest_per_tenant():
    key, d = new_key()
    other, d2 = new_key()
    ring = KeyRing({"acme": d, "globex": d2})
    assert ring.tenant_for(f"Bearer {key}", None) == "acme"
    assert ring.tenant_for(None, other) == "globex"
    assert ring.tenant_for("Bearer nope", None) is None and ring.tenant_for(None, None) is None
    assert digest(key) == d and key not in d


def test_lru_cache_evicts_the_least_recently_used_and_counts_hits():
    cache: ResponseCache[str] = ResponseCache(2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"  # a is now the most recent
    cache.put("c", "3")  # evicts b
    assert cache.get("b") is None and cache.get("c") == "3"
    assert (cache.hits, cache.misses) == (2, 1) and cache.hit_rate == pytest.approx(2 / 3)
    off: ResponseCache[str] = ResponseCache(0)
    off.put("a", "1")
    assert off.get("a") is None and len(off) == 0


def test_int8_replaces_every_linear_and_stays_close():
    torch.manual_seed(0)
    model = build_model("small").eval()
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = torch.log_softmax(model(tokens), -1)
        q = prepare(build_model("small"), device="cpu", precision="fp32")
        q.load_state_dict(model.state_dict())
        q = prepare(q, device="cpu", precision="int8")
        got = torch.log_softmax(q(tokens), -1)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert (got - ref).abs().max() < 0.1


def _ingress(keys: dict[str, str] | None = None, body_limit: int = 65536, root_path: str = ""):
    """An Ingress over a FastAPI app with a cold echo route, and a hot /v1/completions whose calls are
    recorded (so a test can tell which path answered)."""
    from fastapi import HTTPException
    from fastapi.testclient import TestClient

    from elasticml.serve.api import CompletionRequest, CompletionResponse, HotRoute, Ingress, new_api
    from elasticml.serve.auth import KeyRing, digest

    app = new_api("t")
    calls: list[tuple[str, str, str | None]] = []

    @app.post("/v1/echo")
    async def echo(request: CompletionRequest) -> dict:
        calls.append(("cold", request.prompt, None))
        return {"prompt": request.prompt}

    @app.post("/v1/completions")
    async def cold_complete(request: CompletionRequest) -> dict:
        calls.append(("fastapi", request.prompt, None))
        return {}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    class Busy(Exception):
        pass

    async def complete(request: CompletionRequest, tenant: str | None) -> CompletionResponse:
        calls.append(("hot", request.prompt, tenant))
        if request.prompt == "refuse":
            raise HTTPException(status_code=429, detail="slow down", headers={"Retry-After": "3"})
        if request.prompt == "busy":
            raise Busy()
        if request.prompt == "crash":
            raise RuntimeError("a bug")
        return CompletionResponse(completion=request.prompt[::-1], tokens=request.max_tokens, latency_ms=0.5,
                                  model_step=7, cached=False)

    ring = KeyRing({t: digest(k) for t, k in (keys or {}).items()})
    ingress = Ingress(app, keys=ring, body_limit=body_limit, hot={("POST", "/v1/completions"): HotRoute(
        CompletionRequest, complete)})
    from fastapi.responses import JSONResponse

    ingress.add_exception_handler(Busy, lambda request, exc: JSONResponse({"detail": "busy"}, status_code=503))
    return TestClient(ingress, root_path=root_path, raise_server_exceptions=False), calls


def _chunked(body: bytes):  # a generator body is sent without Content-Length
    for i in range(0, len(body), 7):
        yield body[i:i + 7]


def test_body_limit_refuses_declared_and_chunked_bodies_and_passes_the_rest_intact():
    client, calls = _ingress(body_limit=100)
    json_type = {"content-type": "application/json"}
    small = b'{"prompt": "' + b"a" * 40 + b'"}'
    big = b'{"prompt": "' + b"a" * 200 + b'"}'
    for path in ("/v1/echo", "/v1/completions"):  # a cold route (FastAPI) and a hot one
        calls.clear()
        r = client.post(path, content=small, headers=json_type)
        assert r.status_code == 200 and calls == [("cold" if path == "/v1/echo" else "hot", "a" * 40, None)]
        r = client.post(path, content=_chunked(small), headers=json_type)
        assert r.status_code == 200 and calls[-1][1] == "a" * 40  # replayed whole
        r = client.post(path, content=big, headers=json_type)
        assert r.status_code == 413 and "is 214 bytes; the limit is 100" in r.json()["detail"]
        r = client.post(path, content=_chunked(big), headers=json_type)
        assert r.status_code == 413 and "exceeds the limit of 100 bytes" in r.json()["detail"]
        assert len(calls) == 2  # neither refused body reached a handler
        assert client.post(path, content=b'{"prompt": ""}', headers=json_type).status_code == 422


def test_keys_are_checked_before_the_body_is_parsed_or_validated():
    for root in ("", "/prefix"):  # Serve leaves an app's route prefix on the path, in root_path
        client, calls = _ingress(keys={"acme": "k-acme"}, root_path=root)
        for path in ("/v1/echo", "/v1/completions"):
            for body in (b"{not json", b'{"prompt": 5}', b'{"prompt": "x"}', b"\xff" * 10):
                r = client.post(root + path, content=body, headers={"content-type": "application/json"})
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
                assert r.json() == {"detail": "missing or unknown API key: send Authorization: Bearer <key> or "
                                              "X-API-Key: <key>"}
            assert client.post(root + path, content=b"{not json", headers={"authorization": "Bearer k-acme"}
                               ).status_code == 422
            assert client.post(root + path, json={"prompt": "x"}, headers={"x-api-key": "k-other"}).status_code == 401
            assert client.post(root + path, json={"prompt": "x"}, headers={"x-api-key": "k-acme"}).status_code == 200
        assert calls == [("cold", "x", None), ("hot", "x", "acme")]  # the hot handler is told the tenant
        assert client.get(root + "/healthz").status_code == 200  # open: a load balancer has no key


def test_hot_route_answers_valid_bodies_itself_and_leaves_every_error_to_fastapi():
    client, calls = _ingress()
    r = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"completion": "cba", "tokens": 3, "latency_ms": 0.5, "model_step": 7, "cached": False,
                        "model_version": "current"}
    assert calls == [("hot", "abc", None)]
    # Every body the hot path does not take gets exactly what FastAPI answers on a cold route.
    bodies = [(b"{not json", "application/json"), (b'{"prompt": 5}', "application/json"),
              (b'{"prompt": "x", "extra": 1}', "application/json"), (b'{"prompt": "x", "temperature": NaN}',
              "application/json"), (b"[" * 5000 + b"]" * 5000, "application/json"), (b"", "application/json"),
              (b'{"prompt": "x"}', "text/plain"), (b'{"prompt": "x"}', "application/x-www-form-urlencoded"),
              (b"\xff\xfe", "application/json"), (b'{"prompt": "x", "seed": 18446744073709551616}', "application/json")]
    for body, kind in bodies:
        hot = client.post("/v1/completions", content=body, headers={"content-type": kind})
        cold = client.post("/v1/echo", content=body, headers={"content-type": kind})
        assert 400 <= hot.status_code < 500 and (hot.status_code, hot.json()) == (cold.status_code, cold.json()), body
    assert [c[0] for c in calls] == ["hot"]  # none of them reached a handler
    # The handler's own refusals keep their status, detail and headers; its errors are 5xx for it alone.
    r = client.post("/v1/completions", json={"prompt": "refuse"})
    assert (r.status_code, r.json(), r.headers["retry-after"]) == (429, {"detail": "slow down"}, "3")
    r = client.post("/v1/completions", json={"prompt": "busy"})
    assert (r.status_code, r.json()) == (503, {"detail": "busy"})  # a handler registered as Serve registers its own
    r = client.post("/v1/completions", json={"prompt": "crash"})
    assert (r.status_code, r.json()) == (500, {"detail": "internal error"})
    assert client.post("/v1/completions", json={"prompt": "abc"}).status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/v1/completions"]  # the schema is still FastAPI's
