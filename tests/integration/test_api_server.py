"""The API server on loopback over real HTTP, in front of the scheduler's door (in process, no Ray):
a tenant's calls with its own credential, and a hostile tenant's: every answer a 4xx with a reason,
never a 5xx, refusals audited once per burst, the server healthy after."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from elasticml.api.apps import Apps
from elasticml.api.jobs import Jobs
from elasticml.api.server import build_app
from elasticml.api.transport import HttpTransport
from elasticml.cluster.config import load_cluster_spec
from elasticml.errors import AccessDenied, ConfigError, PlacementRefused
from elasticml.scheduler.client import SchedulerClient
from elasticml.scheduler.group_commit import GroupCommit
from elasticml.scheduler.identity import digest, new_token, write_credential
from elasticml.scheduler.principals import add_principal
from elasticml.scheduler.requests import ROUTES
from elasticml.scheduler.shell import open_shell
from elasticml.scheduler.spec import TenantPolicy, WorkloadSpec

from tests.support.api_fakes import FakeJobClient, RecordingServe, built

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    import uvicorn

    tmp = tmp_path_factory.mktemp("api")
    tokens = {n: new_token(n) for n in ("admin", "acme", "globex", "revoked")}
    shell = open_shell(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"), tmp / "sched" / "ledger.sqlite",
                       admin_digest=digest(tokens["admin"]), audit_key_path=tmp / "keys" / "audit.key")
    for n in ("acme", "globex", "revoked"):
        add_principal(shell.scheduler, n, "tenant", digest(tokens[n]))
    committer = GroupCommit(shell.store)
    now = {"t": 0.0}  # the rate limiter's clock: a flood is a flood however slow this machine is
    call = lambda token, route, fields: committer.run(lambda: shell.door.call(token, route, fields))  # noqa: E731
    # Jobs and apps over HTTP: what Ray's job API and Serve were asked is recorded (both run for real in
    # test_scheduler_cluster.py); here the server's answers to hostile bodies are the subject.
    jobs = Jobs(tmp / "api" / "jobs", FakeJobClient())
    apps = Apps(tmp / "api", RecordingServe(), jobs, lambda token: SchedulerClient(
        lambda route, fields, wait=True: call(token, route, fields)), build=built)
    app = build_app(call, jobs=jobs, apps=apps, rate_per_s=20.0, burst=60.0, clock=lambda: now["t"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)
    files = {n: write_credential(tmp / f"{n}.cred", t) for n, t in tokens.items()}
    yield {"url": url, "tokens": tokens, "files": files, "shell": shell, "now": now}
    server.should_exit = True


def client(api, who: str) -> SchedulerClient:
    return SchedulerClient(HttpTransport(api["url"], api["files"][who]))


def post(api, route: str, body=None, *, who: str | None = "acme", **kw):
    headers = kw.pop("headers", {})
    if who is not None:
        headers["Authorization"] = f"Bearer {api['tokens'][who]}"
    return httpx.post(f"{api['url']}/v1/{route}", json=body, headers=headers, **kw)


def test_a_tenant_works_with_only_its_credential_through_the_same_client(api):
    acme = client(api, "acme")
    assert acme.whoami() == {"name": "acme", "role": "tenant"}
    placed = acme.place(WorkloadSpec(name="nightly", tenant="acme", max_workers=2, checkpoint_interval_hours=0.1))
    assert placed.workload == "acme/nightly" and placed.placed and placed.allocations
    assert acme.placement("nightly") == placed
    assert [d["action"] for d in acme.explain("nightly")] == ["place"]
    assert set(acme.status()["running"]) == {"acme/nightly"}
    assert [r["key"] for r in acme.cost_report()["tenant"]] == ["acme"]
    acme.report_progress("nightly", 0.5)
    globex = client(api, "globex")
    assert globex.status()["running"] == {}
    for attempt in (lambda: globex.finish("acme/nightly"), lambda: globex.placement("acme/nightly")):
        with pytest.raises(AccessDenied, match="its own workloads only"):
            attempt()
    with pytest.raises(AccessDenied, match="only an admin"):
        acme.set_tenant(TenantPolicy(tenant="acme", budget=1e9))
    client(api, "admin").set_tenant(TenantPolicy(tenant="globex", budget=0.0))
    with pytest.raises(PlacementRefused, match="budget"):
        globex.place(WorkloadSpec(name="big", tenant="globex", max_workers=1))
    with pytest.raises(ConfigError, match="only spot pools") as err:
        client(api, "admin").interrupt("cpu_reserved")
    assert err.value.field == "node_type"
    acme.finish("nightly")
    assert api["shell"].scheduler.placement("acme/nightly") is None
    client(api, "admin").set_tenant(TenantPolicy(tenant="globex"))  # for the tests after this one


def test_the_openapi_schema_lists_every_route_with_its_request_and_needs_no_credential(api):
    schema = httpx.get(f"{api['url']}/openapi.json").json()
    assert {f"/v1/{name}" for name in ROUTES} <= set(schema["paths"])
    place = schema["paths"]["/v1/place"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "spec" in place["properties"] and "WorkloadSpec" in str(place)


def test_a_hostile_tenant_gets_a_4xx_with_a_reason_for_everything_and_the_server_stays_healthy(api):
    spec = {"name": "w", "tenant": "acme", "max_workers": 1}
    cases = [
        (post(api, "status", {}, who=None), 401, "Bearer"),
        (post(api, "status", {}, who=None, headers={"Authorization": "Bearer nonsense"}), 401, "Bearer"),
        (post(api, "status", {}, who=None, headers={"Authorization": f"Bearer {new_token('acme')}"}), 403, "not recognised"),
        (post(api, "finish", {"name": "globex/x"}), 403, "its own workloads only"),
        (post(api, "place", {"spec": {**spec, "priority": "critical"}}), 403, "at most at priority normal"),
        (post(api, "place", {"spec": spec, "attach": "deadbeef"}), 403, "entrypoints"),
        (post(api, "place", {"spec": {**spec, "tenant": "globex"}}), 403, "its own workloads only"),
        (post(api, "place", {"spec": {**spec, "max_workers": "many"}}), 400, "max_workers"),
        (post(api, "place", {"spec": {**spec, "surprise": 1}}), 400, "surprise"),
        (post(api, "place", {"spec": {**spec, "max_workers": 10**400}}), 400, "max_workers"),
        (post(api, "place", {"spec": [1, 2]}), 400, "mapping"),
        (post(api, "place", {"spec": spec, "extra": 1}), 400, "extra"),
        (post(api, "report_progress", None, content=b'{"name": "w", "fraction": Infinity}'), 400, "fraction"),
        (post(api, "status", None, content=b"[" * 60_000), 400, "nests too deeply"),
        (post(api, "status", None, content=b"{not json", headers={"Content-Type": "application/json"}), 400, "JSON"),
        (post(api, "status", None, content=b"[" * 100_000), 413, "at most"),
        (post(api, "place", None, content=b"x" * (70 * 1024)), 413, "at most"),
        (post(api, "add_principal", {"name": "mallory", "role": "admin", "credential_digest": "0" * 64}), 403, "admin"),
        (post(api, "no_such_call", {}), 404, "no such route"),
        (post(api, "jobs/submit", {"config": {"data": "/d", "storage_path": "/r", "model": "evil:m"}}), 400, "config.model"),
        (post(api, "jobs/status", {"submission_id": "globex-x-00000000"}), 403, "no job of this tenant"),
        (post(api, "apps/deploy", {"config": {"checkpoint": "/home/globex/run"}}), 400, "config.checkpoint"),
        (post(api, "apps/deploy", {"config": {"checkpoint": "s3://b/x", "env_vars": {"A": "b"}}}), 400, "config.env_vars"),
        (post(api, "apps/deploy", {"config": {"checkpoint": "s3://b/x", "max_batch_size": 10**400}}), 400, "max_batch_size"),
        (post(api, "apps/deploy", {"config": {"checkpoint": "job:globex-run-0badf00d"}}), 403, "no job of this tenant"),
        (post(api, "apps/keys/mint", {"app": "globex-app"}), 403, "no app of that name"),
        (post(api, "apps/keys/revoke", {"app": "../x", "key_id": "k00000000"}), 400, "app"),
        (post(api, "apps/status", [1]), 400, "body"),
        (httpx.get(f"{api['url']}/v1/status"), 405, "POST"),
    ]
    for reply, status, words in cases:
        assert reply.status_code == status, (reply.status_code, reply.text, words)
        body = reply.json()
        assert words in body["message"] or words in body.get("field", ""), (words, body)
        assert "Traceback" not in reply.text
    # A revoked credential stops working at once.
    client(api, "admin").remove_principal("revoked")
    assert post(api, "whoami", {}, who="revoked").status_code == 403
    # A flood from one credential: 429 with Retry-After, not 5xx; the server then answers again.
    codes = [post(api, "whoami", {}, who="globex").status_code for _ in range(120)]
    assert 429 in codes and set(codes) <= {200, 429}
    limited = next(r for r in (post(api, "whoami", {}, who="globex") for _ in range(5)) if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert httpx.get(f"{api['url']}/healthz").json() == {"status": "ok"}
    api["now"]["t"] += 3.0  # a few seconds later: the flooder is answered again
    assert post(api, "whoami", {}, who="globex").status_code == 200
    denied = [r for r in api["shell"].scheduler.audit.records() if r["outcome"] == "denied" and r["who"] == "tenant acme"]
    assert len(denied) < 10  # refusals are audited once per burst of a call, with their count after


def test_the_cli_speaks_to_the_api_server_with_a_credential_and_no_ray(api, tmp_path):
    import json
    import os
    import stat
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("elasticml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ELASTICML_"))}
    env["ELASTICML_HOME"] = str(tmp_path / "home")
    env["HOME"] = str(tmp_path)  # no Ray token file to find either
    out = subprocess.run([exe, "login", "--endpoint", api["url"], "--credential", str(api["files"]["acme"])],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "as tenant acme" in out.stdout, out.stderr
    assert stat.S_IMODE((tmp_path / "home" / "login.json").stat().st_mode) == 0o600
    who = subprocess.run([exe, "scheduler", "whoami", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert who.returncode == 0 and json.loads(who.stdout) == {"name": "acme", "role": "tenant"}, who.stderr
    refused = subprocess.run([exe, "scheduler", "finish", "globex/x"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert refused.returncode == 2 and "its own workloads only" in refused.stderr
    other = subprocess.run([exe, "--endpoint", api["url"], "scheduler", "whoami", "--json"], capture_output=True,
                           text=True, env={**env, "ELASTICML_CREDENTIAL_PATH": str(api["files"]["globex"])},
                           timeout=120)
    assert json.loads(other.stdout) == {"name": "globex", "role": "tenant"}, other.stderr


def test_the_dashboard_renders_a_tenants_live_data_and_refreshes_without_a_reload(api, tmp_path):
    """Headless Chromium: the page asks for the credential, shows only the tenant's workloads, costs,
    pools and audit records, and picks up a new placement on its own."""
    import os
    from io import BytesIO

    from tests.support.browser import Browser

    acme = client(api, "acme")
    acme.place(WorkloadSpec(name="dash-a", tenant="acme", max_workers=1, checkpoint_interval_hours=0.1))
    client(api, "globex").place(WorkloadSpec(name="dash-g", tenant="globex", max_workers=1))
    page = httpx.get(f"{api['url']}/")
    assert page.status_code == 200 and "script-src 'sha256-" in page.headers["content-security-policy"]
    assert "http://" not in page.text.replace(api["url"], "") and "https://" not in page.text  # nothing fetched from elsewhere
    browser = Browser()
    try:
        browser.open(f"{api['url']}/")
        browser.wait_for("document.getElementById('login') && !document.getElementById('login').hidden")
        browser.js(f"document.getElementById('cred').value = {api['tokens']['acme']!r};"
                   "document.getElementById('go').click(); true")
        browser.wait_for("document.body.dataset.ready === '1'")
        text = browser.js("document.getElementById('workloads').innerText")
        assert "acme/dash-a" in text and "globex" not in text  # (its audit rows may name globex's tries on acme's)
        assert browser.js("document.getElementById('who').textContent") == "tenant acme"
        assert "placed" in browser.js("document.getElementById('workloads').innerText")
        assert browser.js("document.querySelectorAll('#timeline rect').length") >= 0
        assert browser.js("document.querySelectorAll('#pools tr').length") == 1 + len(
            api["shell"].scheduler.pools)
        assert "place" in browser.js("document.getElementById('audit').innerText")
        marker = browser.js("window.__marker = 42; window.__marker")
        acme.place(WorkloadSpec(name="dash-b", tenant="acme", max_workers=1))
        browser.wait_for("document.getElementById('workloads').innerText.includes('acme/dash-b')")
        assert browser.js("window.__marker") == marker  # refreshed in place, not reloaded
        png = browser.screenshot()
    finally:
        browser.close()
    (tmp_path / "dashboard.png").write_bytes(png)
    if os.environ.get("ELASTICML_KEEP_SCREENSHOT"):
        Path(os.environ["ELASTICML_KEEP_SCREENSHOT"]).write_bytes(png)
    from PIL import Image

    image = Image.open(BytesIO(png)).convert("L")
    assert image.size[0] == 1280 and image.size[1] > 500
    colours = image.getcolors(maxcolors=1 << 16) or []
    assert len(colours) > 20  # text, tables and charts, not a blank page


def test_beyond_loopback_the_server_speaks_https_with_the_clusters_certificate(api, tmp_path):
    import uvicorn

    from elasticml.provision.tls import make_ca, make_node_cert

    make_ca(tmp_path / "ca", "api-test")
    make_node_cert(tmp_path / "ca", tmp_path / "node", ips=["127.0.0.1"], names=["localhost"])
    shell = api["shell"]
    committer = GroupCommit(shell.store)
    app = build_app(lambda token, route, fields: committer.run(lambda: shell.door.call(token, route, fields)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(tmp_path / "node" / "node.crt"),
                                           ssl_keyfile=str(tmp_path / "node" / "node.key")))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        secure = SchedulerClient(HttpTransport(f"https://127.0.0.1:{port}", api["files"]["acme"],
                                               verify=str(tmp_path / "ca" / "ca.crt")))
        assert secure.whoami() == {"name": "acme", "role": "tenant"}
        from elasticml.errors import SchedulerNotRunning

        with pytest.raises(SchedulerNotRunning):  # a certificate not from the cluster's CA is not trusted
            SchedulerClient(HttpTransport(f"https://127.0.0.1:{port}", api["files"]["acme"])).whoami()
        with pytest.raises(ConfigError, match="https://"):
            HttpTransport("http://10.0.0.5:8443", api["files"]["acme"])  # a credential never goes in clear off the host
        # `login` checks the server against the CA it is given and remembers it for the commands after.
        import os
        import subprocess
        import sys

        exe = str(Path(sys.executable).with_name("elasticml"))
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ELASTICML_"))},
               "HOME": str(tmp_path), "ELASTICML_HOME": str(tmp_path / "home")}
        url = f"https://127.0.0.1:{port}"
        untrusted = subprocess.run([exe, "login", "--endpoint", url, "--credential", str(api["files"]["acme"])],
                                   capture_output=True, text=True, env=env, timeout=120)
        assert untrusted.returncode != 0 and not (tmp_path / "home" / "login.json").exists()
        trusted = subprocess.run([exe, "login", "--endpoint", url, "--credential", str(api["files"]["acme"]),
                                  "--ca-cert", str(tmp_path / "ca" / "ca.crt")], capture_output=True, text=True,
                                 env=env, timeout=120)
        assert trusted.returncode == 0, trusted.stderr
        who = subprocess.run([exe, "scheduler", "whoami"], capture_output=True, text=True, env=env, timeout=120)
        assert who.returncode == 0 and "acme" in who.stdout, who.stderr
    finally:
        server.should_exit = True
