"""The completion Serve app over real HTTP on the local cluster: answers, auth, cache, batching, limits."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest
import torch

from elasticml.cluster.local import free_port
from elasticml.models import SIZES, build_model
from elasticml.serve.auth import new_key
from elasticml.serve.generate import generate, log_likelihood
from elasticml.serve.precision import prepare
from elasticml.train.checkpoint import load_model, write_checkpoint

pytestmark = pytest.mark.integration
KEY, DIGEST = new_key()
OTHER_KEY, OTHER_DIGEST = new_key()


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
    # fp32 here, so that batched answers can be held equal to one-by-one ones (int8's activation scale is
    # per batch, so its answers depend a little on their batch neighbours); int8 is tested on its own below.
    serve.run(build_app({"checkpoint": str(folder), "market": "reserved", "batch_wait_ms": 20, "precision": "fp32",
                         "api_keys": {"acme": DIGEST, "globex": OTHER_DIGEST}, "max_body_bytes": 20000,
                         "tenant_share": 1}),  # no per-tenant cap here: tests below flood as one tenant
              name="completion", route_prefix="/")
    int8 = prepare(load_model(folder)[0], device="cpu", precision="int8")  # what the replica computes
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield {"client": client, "model": model, "int8": int8, "folder": folder, "port": port}
    serve.shutdown()


def test_answers_match_the_loaded_checkpoint(served):
    client = served["client"]
    for prompt in ["def main(", "héllo wörld"]:
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 16})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = generate(served["model"], prompt.encode(), max_tokens=16).decode("utf-8", errors="replace")
        assert body["completion"] == expected
        assert body["tokens"] == 16  # bytes generated, whatever U+FFFD the decoding put in the text
        assert body["model_step"] == 42 and body["latency_ms"] > 0


def test_score_is_the_checkpoints_log_likelihood(served):
    r = served["client"].post("/v1/score", json={"context": "def ", "continuation": "main():"})
    assert r.status_code == 200, r.text
    total, n = log_likelihood(served["model"], b"def ", b"main():")
    assert r.json()["tokens"] == n == 7
    assert r.json()["log_likelihood"] == pytest.approx(total, rel=1e-5)
    assert r.json()["nll_per_byte"] == pytest.approx(-total / 7, rel=1e-5)


def test_cpu_replicas_default_to_int8_and_stay_close_to_fp32(served):
    from ray import serve

    from elasticml.serve.completion import build_app

    serve.run(build_app({"checkpoint": str(served["folder"])}), name="int8", route_prefix="/int8")
    base = f"http://127.0.0.1:{served['port']}/int8"
    assert httpx.get(f"{base}/v1/health").json()["precision"] == "int8"  # no keys on this app
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "def main(", "max_tokens": 16}, timeout=60)
    assert r.json()["completion"] == generate(served["int8"], b"def main(", max_tokens=16).decode(errors="replace")
    score = httpx.post(f"{base}/v1/score", json={"context": "def ", "continuation": "main():"}, timeout=60).json()
    fp32, _ = log_likelihood(served["model"], b"def ", b"main():")
    assert score["log_likelihood"] == pytest.approx(fp32, rel=0.01)  # the quality tolerance: within 1%
    serve.delete("int8")


def test_the_openapi_schema_is_published(served):
    schema = served["client"].get("/openapi.json").json()
    assert {"/v1/completions", "/v1/score", "/healthz", "/v1/stats"} <= set(schema["paths"])
    assert "max_tokens" in schema["components"]["schemas"]["CompletionRequest"]["properties"]


def test_the_deployment_is_in_the_audit_trail_and_a_tenant_cannot_deploy_around_the_scheduler(
        served, local_cluster, tmp_path, monkeypatch):
    """Every build is recorded before its replicas start: by whom, which checkpoint (step and manifest
    MAC) and which tenants' keys (a keyring fingerprint, so a key change shows as a new one)."""
    import json

    from elasticml.errors import AccessDenied
    from elasticml.scheduler.audit import read_records
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.serve.audit import keyring_fingerprint
    from elasticml.serve.completion import build_app
    from elasticml.train.checkpoint import read_meta

    from elasticml.home import home

    trail = home() / "scheduler" / local_cluster.name / "audit.jsonl"
    # This module's first build (the fixture's), among those of the modules before it on the shared cluster.
    deploys = [r for r in read_records(trail) if r["action"] == "deploy" and str(served["folder"]) in r["why"]]
    assert deploys and deploys[0]["who"].startswith("admin ") and deploys[0]["target"] == "completion"
    why = deploys[0]["why"]
    assert f"checkpoint {served['folder']}" in why and "step 42" in why
    assert str(read_meta(served["folder"])["mac"])[:16] in why
    assert "['acme', 'globex']" in why and keyring_fingerprint({"acme": DIGEST, "globex": OTHER_DIGEST}) in why
    assert KEY not in json.dumps(deploys)  # digests and their fingerprint only
    # A tenant's build of an app without a tenant: refused by the door, and audited.
    SchedulerClient.connect().add_principal("acme", "tenant", tmp_path / "acme.cred")
    monkeypatch.setenv("ELASTICML_CREDENTIAL_PATH", str(tmp_path / "acme.cred"))
    with pytest.raises(AccessDenied, match="an app without a tenant is an operator's"):
        build_app({"checkpoint": str(served["folder"]), "name": "sneaky", "market": "spot"})
    denied = [r for r in read_records(trail) if r["outcome"] == "denied" and r["target"] == "acme/sneaky"]
    assert denied and denied[-1]["who"] == "tenant acme" and denied[-1]["action"] == "record_event"


def test_replica_runs_on_the_market_it_was_placed_on(served):
    health = served["client"].get("/v1/health").json()
    assert health["market"] == "reserved" and health["node_type"] == "cpu_reserved"


def test_open_health_says_only_ok_and_the_details_need_a_key(served):
    base = f"http://127.0.0.1:{served['port']}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/v1/health").status_code == 401
    details = served["client"].get("/v1/health").json()
    assert details["checkpoint"] == str(served["folder"]) and details["step"] == 42


def test_completion_and_score_refuse_what_does_not_fit_the_context_alike(served):
    client = served["client"]
    long_prompt = "y" * 120  # the tiny model's context is 128 bytes
    r = client.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 16})
    assert r.status_code == 422 and "is 136; the model's context is 128" in r.text
    r = client.post("/v1/score", json={"context": long_prompt, "continuation": "z" * 16})
    assert r.status_code == 422 and "model's context is 128" in r.text
    assert client.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 8}).status_code == 200


def test_no_key_or_a_wrong_key_is_401_and_keys_are_per_tenant(served):
    base = f"http://127.0.0.1:{served['port']}"
    body = {"prompt": "x", "max_tokens": 2}
    assert httpx.post(f"{base}/v1/completions", json=body).status_code == 401
    wrong = httpx.post(f"{base}/v1/completions", json=body, headers={"Authorization": "Bearer eml_nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    assert "eml_nope" not in wrong.text
    assert httpx.post(f"{base}/v1/score", json={"continuation": "ab"}).status_code == 401
    ok = httpx.post(f"{base}/v1/completions", json=body, headers={"X-API-Key": OTHER_KEY})
    assert ok.status_code == 200
    assert httpx.get(f"{base}/healthz").status_code == 200  # health stays open for load balancers


def test_repeated_deterministic_requests_hit_the_cache(served):
    client = served["client"]
    body = {"prompt": "cache me", "max_tokens": 24}
    before = client.get("/v1/stats").json()["cache"]
    first, second = client.post("/v1/completions", json=body).json(), client.post("/v1/completions", json=body).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["completion"] == second["completion"]
    sampled = {"prompt": "cache me", "max_tokens": 24, "temperature": 1.0}  # no seed: never cached
    assert client.post("/v1/completions", json=sampled).json()["cached"] is False
    assert client.post("/v1/completions", json=sampled).json()["cached"] is False
    after = client.get("/v1/stats").json()["cache"]
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"] + 1
    assert 0 < after["hit_rate"] <= 1


def test_poison_requests_among_40_innocent_ones_fail_alone(served):
    client = served["client"]
    innocent = [{"prompt": f"innocent {i}", "max_tokens": 8, "temperature": 0.7, "seed": i} for i in range(40)]
    poison = [{"prompt": "poison", "max_tokens": 8, "temperature": 5e-324},
              {"prompt": "poison", "max_tokens": 8, "temperature": 1.0, "seed": 2**64},
              {"prompt": "poison", "max_tokens": 8, "temperature": 1.0, "seed": 2**32}]
    bodies = innocent[:20] + poison + innocent[20:]
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(lambda b: client.post("/v1/completions", json=b), bodies))
    codes = [r.status_code for r in replies]
    assert codes[20:23] == [422, 422, 422], [r.text for r in replies[20:23]]
    assert codes[:20] + codes[23:] == [200] * 40
    assert all(len(r.json()["completion"].encode()) > 0 for r in replies[:20] + replies[23:])


def test_the_cache_is_per_tenant(served):
    base = f"http://127.0.0.1:{served['port']}"
    body = {"prompt": "tenant-scoped prompt", "max_tokens": 12}

    def ask(key: str) -> dict:
        r = httpx.post(f"{base}/v1/completions", json=body, headers={"X-API-Key": key}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    assert [ask(KEY)["cached"], ask(KEY)["cached"]] == [False, True]
    other = ask(OTHER_KEY)  # the same prompt from another tenant is computed afresh, never served from acme's
    assert other["cached"] is False
    def mine(key: str) -> dict:
        return httpx.get(f"{base}/v1/stats", headers={"X-API-Key": key}, timeout=60).json()["tenant"]

    before = mine(OTHER_KEY)
    assert ask(OTHER_KEY)["cached"] is True
    after = mine(OTHER_KEY)
    # Each tenant sees its own numbers only, and the endpoint says what it covers.
    assert after["name"] == "globex" and after["requests"] == before["requests"] + 1
    assert after["cache_hits"] == before["cache_hits"] + 1
    assert mine(KEY)["name"] == "acme" and "Prometheus" in httpx.get(
        f"{base}/v1/stats", headers={"X-API-Key": KEY}, timeout=60).json()["covers"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served):
    client = served["client"]
    prompts = [f"request number {i}: " + "x" * (i % 5) for i in range(12)]
    with cf.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda p: client.post("/v1/completions", json={"prompt": p, "max_tokens": 12,
                                                                                "temperature": 0.5, "seed": 1}),
                                prompts))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]
    for prompt, reply in zip(prompts, replies):
        alone = generate(served["model"], prompt.encode(), max_tokens=12, temperature=0.5, seed=1)
        assert reply.json()["completion"] == alone.decode("utf-8", errors="replace")
    assert client.get("/v1/stats").json()["largest_batch"] > 1


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/v1/completions", {"prompt": "", "max_tokens": 4}, 422, "at least 1 character"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 422, "greater than or equal to 1"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 100000}, 422, "less than or equal to 512"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 200}, 422, "below the model's context"),
        ("/v1/completions", {"prompt": "x", "temperature": -1}, 422, "greater than or equal to 0"),
        ("/v1/completions", {"prompt": "x", "temperature": 0.5, "seed": -3}, 422, "greater than or equal to 0"),
        ("/v1/completions", {"prompt": 5}, 422, "valid string"),
        ("/v1/completions", {"max_tokens": 3}, 422, "Field required"),
        ("/v1/completions", {"prompt": "x", "tokens": 3}, 422, "Extra inputs are not permitted"),
        ("/v1/completions", {"prompt": "x" * 30000}, 413, "limit is 20000"),
        ("/v1/score", {"context": "", "continuation": "a"}, 422, "at least 2"),
        ("/v1/score", {"context": "x" * 100, "continuation": "y" * 100}, 422, "model's context is 128"),
        ("/v1/score", {"text": "a"}, 422, "Extra inputs are not permitted"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(served, path, body, status, words):
    client = served["client"]
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert words in r.text


def test_non_json_body_is_a_4xx_and_the_app_keeps_serving(served):
    client = served["client"]
    r = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    assert client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_overload_gets_429_with_retry_after_and_slow_requests_504(served):
    from ray import serve

    from elasticml.serve.completion import build_app

    serve.run(build_app({"checkpoint": str(served["folder"]), "precision": "fp32", "max_batch_size": 1,
                         "max_ongoing_requests": 1, "max_queued_requests": 1, "retry_after_s": 2,
                         "request_timeout_s": 0.5, "cache_size": 0, "router_max_backoff_s": 0.02}),
              name="tight", route_prefix="/tight")
    assert _router_settings("tight")["max_backoff_s"] == 0.02  # as Serve's controller holds it
    base = f"http://127.0.0.1:{served['port']}/tight"
    body = {"prompt": "slow", "max_tokens": 120}
    with cf.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{base}/v1/completions", json=body, timeout=60), range(8)))
    codes = sorted(r.status_code for r in replies)
    assert 429 in codes, codes
    assert all(r.headers.get("retry-after") == "2" for r in replies if r.status_code == 429)
    assert set(codes) <= {200, 429, 504}, codes
    # (A certain 504 and what it does to the replica: test_a_request_past_its_deadline_gets_504_...)
    assert httpx.post(f"{base}/v1/completions", json={"prompt": "ok", "max_tokens": 2}, timeout=60).status_code == 200
    serve.delete("tight")


def _router_settings(app: str) -> dict:
    """The request router settings of the app's one deployment, as Serve's controller holds them."""
    from ray.serve.context import _get_global_client

    (deployment,) = _get_global_client().get_serve_details()["applications"][app]["deployments"].values()
    return deployment["deployment_config"]["request_router_config"]


def test_the_router_retries_a_queued_request_at_the_platforms_cap_not_serves(served):
    from ray.serve.config import RequestRouterConfig

    from elasticml.serve.routing import ROUTER_MAX_BACKOFF_S

    settings = _router_settings("completion")
    assert settings["max_backoff_s"] == ROUTER_MAX_BACKOFF_S != RequestRouterConfig().max_backoff_s


def _hostile_requests() -> list[tuple[str, str, dict[str, str], bytes]]:
    """At least 300 hostile requests: wrong types, sizes, unicode, NaN/inf, huge ints, nesting, encodings."""
    import json
    import random

    rng = random.Random(13)
    weird_values: list[object] = [
        None, True, False, 0, -1, 1.5, -0.0, 2**31, 2**63, 2**64, -(2**64), 10**30, 1e308, 5e-324, "", " ", "x" * 5000,
        "\u0000", "\ud7ff\ue000", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🎉", "\u202eRTL", "ﷺ" * 200, [], {}, [1, 2], {"a": 1}, [[[[]]]], "NaN", "1e400",
    ]
    fields = {"/v1/completions": ["prompt", "max_tokens", "temperature", "seed"],
              "/v1/score": ["context", "continuation"]}
    good = {"/v1/completions": {"prompt": "def ", "max_tokens": 4}, "/v1/score": {"context": "de", "continuation": "f"}}
    json_headers = {"content-type": "application/json"}
    out: list[tuple[str, str, dict[str, str], bytes]] = []
    for path, names in fields.items():
        for name in names:  # every field, every weird value
            for value in weird_values:
                out.append(("POST", path, json_headers, json.dumps({**good[path], name: value}).encode()))
        for raw in (b'{"prompt": NaN, "max_tokens": 4}', b'{"prompt": "x", "max_tokens": Infinity}',
                    b'{"prompt": "x", "temperature": -Infinity}', b'{"prompt": "x", "max_tokens": 1e400}',
                    b'{"prompt": "x", "seed": 123456789012345678901234567890}', b'{"prompt": "x", "prompt": 5}',
                    b'{"context": "ab", "continuation": "\\ud800"}', b'{"prompt": "\\udfff\\ud800"}',
                    b"\xff\xfe\x00{", b"\xef\xbb\xbf{\"prompt\": \"x\"}", b"", b"null", b"[]", b"[1,2,3]", b"\"str\"",
                    b"123", b"true", b"{", b"}", b"{}", b'{"prompt": "x",}', b"{'prompt': 'x'}",
                    b"[" * 9000 + b"]" * 9000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                    json.dumps({"prompt": "x", "extra": list(range(3000))}).encode()):
            out.append(("POST", path, json_headers, raw))
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                      "application/xml", "application/json; charset=utf-16", "", "*/*"):
            out.append(("POST", path, {"content-type": ctype}, json.dumps(good[path]).encode()))
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            out.append((method, path, json_headers, json.dumps(good[path]).encode()))
    while len(out) < 320:  # random bytes and random mutations of a good body
        path = rng.choice(list(fields))
        base = bytearray(json.dumps(good[path]).encode())
        for _ in range(rng.randint(1, 6)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        out.append(("POST", path, json_headers, bytes(base) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 400))))
    return out


def test_300_hostile_requests_get_no_5xx_and_the_replica_stays_healthy(served):
    """Over real HTTP, with and without a key (without one, nothing is parsed: 401)."""
    hostile = _hostile_requests()
    assert len(hostile) >= 300
    base = f"http://127.0.0.1:{served['port']}"
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=base, timeout=60) as plain:
        for i, (method, path, headers, body) in enumerate(hostile):
            keyed = {**headers, "authorization": f"Bearer {KEY}"} if i % 5 else headers
            r = plain.request(method, path, headers=keyed, content=body)
            assert r.status_code < 500, (method, path, body[:200], r.status_code, r.text[:300])
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        # Chunked bodies (no Content-Length), too large and not.
        for size, status in ((10, 200), (5_000, 422), (25_000, 413)):  # fits; over max_length; over the limit
            r = plain.post("/v1/completions", content=iter([b'{"prompt": "', b"x" * size, b'", "max_tokens": 2}']),
                           headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
            assert r.status_code == status, r.text[:300]
    assert statuses.get(401, 0) >= len(hostile) // 5 - 5  # every keyless one was stopped at the door
    assert served["client"].post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200
    assert served["client"].get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("batch", [1, 4], ids=["alone", "batched"])  # straight to the model / the batch queue
def test_a_request_past_its_deadline_gets_504_and_stops_generating(served, batch):
    """The 504 is certain (a 5 ms limit against ~50 ms of generation), and the replica stops: its stats
    count the request as cancelled with fewer bytes generated than it asked for."""
    from ray import serve

    from elasticml.serve.completion import build_app

    serve.run(build_app({"checkpoint": str(served["folder"]), "precision": "fp32", "max_batch_size": batch,
                         "batch_wait_ms": 0, "request_timeout_s": 0.005, "cache_size": 0}),
              name="deadline", route_prefix="/deadline")
    base = f"http://127.0.0.1:{served['port']}/deadline"
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "slow", "max_tokens": 120}, timeout=60)
    assert r.status_code == 504 and "did not answer within 0.005s" in r.text
    stats = httpx.get(f"{base}/v1/stats", timeout=60).json()
    deadline = __import__("time").monotonic() + 30
    while stats["cancelled"] < 1:  # the batch's thread notices between two tokens
        assert __import__("time").monotonic() < deadline, stats
        stats = httpx.get(f"{base}/v1/stats", timeout=60).json()
    assert stats["cancelled"] == 1 and stats["generated_bytes"] < 120, stats
    serve.delete("deadline")


def test_one_tenants_flood_cannot_take_the_replica_from_another(served):
    """acme sends 30 requests at once while globex sends 3, one at a time: acme's excess gets 429 at the
    replica (its share is 2 of 4 slots), and globex, under its share, gets no 429 at all."""
    from ray import serve

    from elasticml.serve.completion import build_app

    serve.run(build_app({"checkpoint": str(served["folder"]), "precision": "fp32", "max_batch_size": 1,
                         "max_ongoing_requests": 4, "max_queued_requests": 256, "cache_size": 0,
                         "api_keys": {"acme": DIGEST, "globex": OTHER_DIGEST}}),
              name="fair", route_prefix="/fair")
    url = f"http://127.0.0.1:{served['port']}/fair/v1/completions"

    def ask(key: str) -> httpx.Response:
        return httpx.post(url, json={"prompt": "flood", "max_tokens": 100}, headers={"X-API-Key": key}, timeout=120)

    with cf.ThreadPoolExecutor(31) as pool:
        floods = [pool.submit(ask, KEY) for _ in range(30)]
        # globex stays under its share: one request at a time, three in a row, during the flood.
        polite = pool.submit(lambda: [ask(OTHER_KEY) for _ in range(3)])
        flood_codes = [f.result().status_code for f in floods]
        polite_replies = polite.result()
    assert [r.status_code for r in polite_replies] == [200, 200, 200], [r.text[:200] for r in polite_replies]
    assert 429 in flood_codes and set(flood_codes) <= {200, 429}, flood_codes
    refused = next(f.result() for f in floods if f.result().status_code == 429)
    assert "its share is 2" in refused.text and refused.headers["retry-after"] == "1"
    serve.delete("fair")
