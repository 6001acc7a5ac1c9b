"""Ray's internal TLS as the cloud configs render it, on loopback: a real Ray head with the node
certificate `python -m elasticml.provision.tls node` makes from the cluster's CA, token auth on.
A Ray client with the cluster's certificate runs a task; a plaintext peer and a peer whose
certificate another CA signed get nothing from the GCS."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elasticml.cluster.local import free_port
from elasticml.provision.tls import make_ca, make_node_cert, tls_env

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def tls_head(tmp_path_factory):
    t = tmp_path_factory.mktemp("tls")
    make_ca(t / "ca", "tls-test")
    made = subprocess.run([sys.executable, "-m", "elasticml.provision.tls", "node", "--ca-dir", str(t / "ca"),
                           "--out", str(t / "node")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert (t / "node" / "node.key").stat().st_mode & 0o777 == 0o600
    (t / "token").write_text("t" * 64)
    os.chmod(t / "token", 0o600)
    env = {**os.environ, **tls_env(t / "node"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(t / "token")}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", f"--temp-dir={t}/ray", "--disable-usage-stats"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "the TLS head did not come up"
                time.sleep(0.5)
        yield {"dir": t, "env": env, "port": port}
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # `ray start --block` takes half a minute over a graceful stop; nothing here needs one
            head.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)


def _first_bytes(port: int, cert_dir: Path | None, ca: Path) -> bytes:
    """What the GCS sends a peer that opens HTTP/2 over TLS (with `cert_dir`'s certificate, if any)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    if cert_dir is not None:
        ctx.load_cert_chain(str(cert_dir / "node.crt"), str(cert_dir / "node.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(HTTP2_PREFACE)
            s.settimeout(5)
            return s.recv(64)
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return b""


def test_a_ray_client_with_the_clusters_certificate_runs_tasks(tls_head):
    code = ("import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); "
            "print('answer', ray.get(ray.remote(lambda: 40 + 2).remote()))" % tls_head["port"])
    proc = subprocess.run([sys.executable, "-c", code], env=tls_head["env"], capture_output=True, text=True, timeout=120)
    assert "answer 42" in proc.stdout, proc.stderr[-2000:]


def test_the_gcs_answers_only_peers_the_clusters_ca_signed(tls_head):
    t, port = tls_head["dir"], tls_head["port"]
    ca = t / "node" / "ca.crt"
    mine = _first_bytes(port, t / "node", ca)
    assert mine[3:4] == b"\x04"  # an HTTP/2 SETTINGS frame: gRPC over mutually authenticated TLS
    make_ca(t / "other-ca", "someone else")
    make_node_cert(t / "other-ca", t / "other", ips=["127.0.0.1"], names=["localhost"])
    assert _first_bytes(port, t / "other", ca) == b""  # a certificate another CA signed
    assert _first_bytes(port, None, ca) == b""  # no client certificate
    with socket.create_connection(("127.0.0.1", port), 5) as plain:  # no TLS at all
        plain.sendall(HTTP2_PREFACE)
        plain.settimeout(5)
        try:
            got = plain.recv(64)
        except (ConnectionError, TimeoutError):
            got = b""
    assert b"\x04" not in got[3:4] and not got.startswith(b"\x00\x00")
