"""The HTTP surface declared once (elasticml.serve.ingress): keys, body limit, hot and cold routes, and
the three surfaces that serve the one table."""

import pytest
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from elasticml.serve import ingress as ingress_module
from elasticml.serve.api import CompletionRequest, CompletionResponse
from elasticml.serve.auth import KeyRing, digest
from elasticml.serve.ingress import HEALTHZ, SHARED, Gate, Ingress, Route


class Busy(Exception):
    pass


class Surface:
    """A surface of the shared routes, a cold echo route with a body and the open health route, whose
    calls are recorded (so a test can tell which path answered)."""

    routes = (HEALTHZ, Route(method="POST", path="/v1/echo", handler="echo", body=CompletionRequest))

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.calls: list[tuple[str, str, str | None]] = []

    async def complete(self, request: CompletionRequest, tenant: str | None) -> CompletionResponse:
        self.calls.append(("hot", request.prompt, tenant))
        if request.prompt == "refuse":
            raise HTTPException(status_code=429, detail="slow down", headers={"Retry-After": "3"})
        if request.prompt == "busy":
            raise Busy()
        if request.prompt == "crash":
            raise RuntimeError("a bug")
        return CompletionResponse(completion=request.prompt[::-1], tokens=request.max_tokens, latency_ms=0.5,
                                  model_step=7, cached=False)

    async def score(self, request: object, tenant: str | None) -> None:
        raise AssertionError("not called here")

    async def echo(self, request: CompletionRequest, tenant: str | None) -> dict:
        self.calls.append(("cold", request.prompt, tenant))
        return {"prompt": request.prompt}

    def healthz(self, tenant: None) -> dict:
        return {"status": "ok"}


def _ingress(keys: dict[str, str] | None = None, body_limit: int = 65536, root_path: str = ""):
    surface = Surface(Gate(keys=KeyRing({t: digest(k) for t, k in (keys or {}).items()}), body_limit=body_limit))
    ingress = Ingress(surface, title="t", routes=Surface.routes)
    ingress.add_exception_handler(Busy, lambda request, exc: JSONResponse({"detail": "busy"}, status_code=503))
    return TestClient(ingress, root_path=root_path, raise_server_exceptions=False), surface.calls


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
        assert calls == [("cold", "x", "acme"), ("hot", "x", "acme")]  # both told the tenant the ingress found
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


class CountingKeyRing(KeyRing):
    def __init__(self, digests: dict[str, str]) -> None:
        super().__init__(digests)
        self.checks = 0

    def tenant_for(self, authorization: str | None, api_key: str | None) -> str | None:
        self.checks += 1
        return super().tenant_for(authorization, api_key)


def _surfaces(gate: Gate) -> dict[str, object]:
    """The three surfaces as plain objects (the classes under Serve's ASGI wrapper), without Ray: built
    bare where a constructor would load a model or ask Serve for handles."""
    from elasticml.serve.canary import CanaryRouter
    from elasticml.serve.completion import Completer
    from elasticml.serve.pools import PoolRouter

    plain = {name: cls.func_or_class.__mro__[1] for name, cls in
             (("completer", Completer), ("pools", PoolRouter), ("canary", CanaryRouter))}
    pools = plain["pools"]([], [], gate, None)
    completer, canary = object.__new__(plain["completer"]), plain["canary"]()
    completer.gate = canary.gate = gate
    return {"completer": completer, "pools": pools, "canary": canary}


def test_a_route_added_to_the_shared_table_is_served_by_all_three_surfaces(monkeypatch):
    extra = Route(method="POST", path="/v1/completions/again", handler="complete", body=CompletionRequest,
                  response=CompletionResponse, hot=True)
    monkeypatch.setattr(ingress_module, "SHARED", (*SHARED, extra))

    async def complete(request: CompletionRequest, tenant: str | None) -> CompletionResponse:
        return CompletionResponse(completion="again", tokens=1, latency_ms=0.1, model_step=1, cached=False)

    for name, surface in _surfaces(Gate(keys=KeyRing({}))).items():
        surface.complete = complete  # type: ignore[attr-defined]  # no backend behind these
        asgi = surface.__serve_build_asgi_app__()  # type: ignore[attr-defined]
        served = {(r.method, r.path) for r in asgi.routes}
        assert {(r.method, r.path) for r in (*SHARED, extra)} <= served, name
        paths = TestClient(asgi).get("/openapi.json").json()["paths"]
        assert {r.path for r in asgi.routes} == set(paths), name  # every route in the schema, nothing else
        r = TestClient(asgi).post("/v1/completions/again", json={"prompt": "x"})
        assert r.status_code == 200 and r.json()["completion"] == "again", name


def test_every_route_of_every_surface_names_a_handler_it_has():
    for name, surface in _surfaces(Gate(keys=KeyRing({}))).items():
        asgi = surface.__serve_build_asgi_app__()  # type: ignore[attr-defined]
        assert asgi.routes[:len(SHARED)] == SHARED, name
        assert all(callable(getattr(surface, r.handler)) for r in asgi.routes), name
    with pytest.raises(TypeError, match="names 'nothing', which Surface lacks"):
        Ingress(Surface(Gate(keys=KeyRing({}))), title="t", routes=(Route(method="GET", path="/x", handler="nothing"),))
    with pytest.raises(ValueError, match="every /v1/ path needs a key"):
        Route(method="GET", path="/v1/open", handler="healthz", auth=False)


def test_a_cold_route_checks_the_key_once_and_is_told_the_tenant():
    ring = CountingKeyRing({"acme": digest("k-acme")})
    gate = Gate(keys=ring)
    surfaces = _surfaces(gate)

    class Service:
        def stats(self, tenant: str | None) -> dict:
            return {"tenant": tenant}

    surfaces["completer"].service = Service()  # type: ignore[attr-defined]
    for name, path in (("pools", "/v1/pools"), ("completer", "/v1/stats")):
        client = TestClient(surfaces[name].__serve_build_asgi_app__())  # type: ignore[attr-defined]
        before = ring.checks
        r = client.get(path, headers={"x-api-key": "k-acme"})
        assert r.status_code == 200 and ring.checks == before + 1, (name, r.text)
        if name == "completer":
            assert r.json() == {"tenant": "acme"}
        r = client.get(path)
        assert r.status_code == 401 and ring.checks == before + 2
        assert r.json() == {"detail": ingress_module.UNAUTHORIZED} and r.headers["www-authenticate"] == "Bearer"
        assert client.get("/healthz").status_code == 200 and ring.checks == before + 2  # open: no key asked


def test_a_surface_that_replaces_its_gate_is_held_to_the_new_one_at_once():
    """The canary router's keys and limit change in place (user_config): the ingress reads the gate it
    has now, never a copy taken when it was built."""
    surface = Surface(Gate(keys=KeyRing({})))
    client = TestClient(Ingress(surface, title="t", routes=Surface.routes))
    assert client.post("/v1/echo", json={"prompt": "x"}).status_code == 200
    surface.gate = Gate(keys=KeyRing({"acme": digest("k")}), body_limit=20)
    assert client.post("/v1/echo", json={"prompt": "x"}).status_code == 401
    assert client.post("/v1/echo", json={"prompt": "x" * 30}, headers={"x-api-key": "k"}).status_code == 413
    assert client.post("/v1/echo", json={"prompt": "x"}, headers={"x-api-key": "k"}).status_code == 200



def test_a_completion_counts_as_on_its_way_to_the_batcher_while_its_body_is_read():
    import asyncio

    completer = _surfaces(Gate(keys=KeyRing({})))["completer"]
    answered: list[str] = []

    async def complete(request: CompletionRequest, tenant: str | None) -> CompletionResponse:
        answered.append(request.prompt)
        return CompletionResponse(completion="", tokens=1, latency_ms=0.1, model_step=1, cached=False)

    completer.complete = complete  # type: ignore[attr-defined]  # no model behind it here

    async def scenario():
        ingress = completer.__serve_build_asgi_app__()  # type: ignore[attr-defined]
        body_sent = asyncio.Event()
        statuses: list[int] = []

        async def receive():  # the body comes from the proxy, a round trip away
            await body_sent.wait()
            return {"type": "http.request", "body": b'{"prompt": "abc"}', "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "root_path": "",
                 "headers": [(b"content-type", b"application/json")], "query_string": b""}
        call = asyncio.create_task(ingress(scope, receive, send))
        for _ in range(5):
            await asyncio.sleep(0)
        # What the Completer hands its batcher as `arriving`, and the route it counts.
        reading = completer._arriving(), ingress.reading("complete"), ingress.reading("score")  # type: ignore[attr-defined]
        body_sent.set()
        await call
        return reading, completer._arriving(), statuses  # type: ignore[attr-defined]

    reading, after, statuses = asyncio.run(scenario())
    assert reading == (1, 1, 0) and after == 0  # only while its body is on the way, and only its own route
    assert statuses == [200] and answered == ["abc"]
