"""The API server on the head: a detached Ray actor that runs the HTTP service beside the scheduler.

It lives where the Ray token already is (a Ray worker on the head), so the token never goes to a
tenant: tenants reach it over HTTP with their own credential. `elasticml scheduler start` (which
`cluster up` runs) starts it once per cluster; it answers on 127.0.0.1 unless given a host and a
certificate. Ray restarts it if it dies, on the same port.
"""

from __future__ import annotations

import threading
import time

import ray

SERVER_NAME = "elasticml-api"


@ray.remote(num_cpus=0, max_restarts=-1)
class ApiServerActor:
    def __init__(self, host: str, port: int, tls_cert: str | None, tls_key: str | None,
                 node_ca: str | None = None) -> None:
        from pathlib import Path

        import uvicorn

        from elasticml.api.server import SERVER_OPTIONS, cluster_app

        scheme = "https" if tls_cert else "http"
        self.url = f"{scheme}://{'127.0.0.1' if host in ('127.0.0.1', 'localhost') else host}:{port}"
        config = uvicorn.Config(cluster_app(node_ca=Path(node_ca) if node_ca else None), host=host, port=port, log_level="warning",
                                ssl_certfile=tls_cert, ssl_keyfile=tls_key, **SERVER_OPTIONS)
        self.server = uvicorn.Server(config)
        threading.Thread(target=self.server.run, daemon=True, name="api-server").start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {host}:{port}")
            time.sleep(0.05)

    def address(self) -> str:
        return self.url


def start_api_server(*, host: str = "127.0.0.1", port: int = 0, tls_cert: str | None = None,
                     tls_key: str | None = None, node_ca: str | None = None) -> str:
    """The cluster's API server (started once; found again after), and its URL. Needs a Ray driver
    connection. Port 0: a free one. `node_ca`: the CA's folder on the head, to sign workers' certificates."""
    from elasticml.errors import ConfigError
    from elasticml.scheduler.actor import NAMESPACE

    if host not in ("127.0.0.1", "localhost") and not (tls_cert and tls_key):
        raise ConfigError("beyond loopback the API server speaks HTTPS only: give it a certificate", field="api_host")
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    handle = ApiServerActor.options(  # type: ignore[attr-defined]  # mypy keeps a decorated class's own type; ray.remote made it an ActorClass
        name=SERVER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        resources={"node:__internal_head__": 0.001},
    ).remote(host, port, tls_cert, tls_key, node_ca)
    return str(ray.get(handle.address.remote(), timeout=60))


def api_url() -> str | None:
    """The running API server's URL, or None (needs a Ray driver connection)."""
    from elasticml.scheduler.actor import NAMESPACE

    try:
        return str(ray.get(ray.get_actor(SERVER_NAME, namespace=NAMESPACE).address.remote(), timeout=30))
    except ValueError:
        return None
