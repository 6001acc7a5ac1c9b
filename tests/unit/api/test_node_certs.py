"""Workers' Ray TLS certificates from the head's API server: signed only for the node agent, only for
the address the request came from, and checked by the worker against the cluster's CA.

The route runs in process (a fake door answers whoami); the last test runs `tls request` against a
real uvicorn HTTPS server on loopback, with the server's certificate from tls.py."""

from __future__ import annotations

import ipaddress
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from elasticml.api.server import build_app
from elasticml.errors import AuthError, ConfigError, SchedulerNotRunning
from elasticml.provision import tls
from elasticml.provision.node_certs import NodeSigner, check_issued, make_request, request_certificate

PRINCIPALS = {"eml1.node-agent.s3cret": {"name": "node-agent", "role": "agent"},
              "eml1.acme.s3cret": {"name": "acme", "role": "tenant"},
              "eml1.admin.s3cret": {"name": "admin", "role": "admin"}}
AGENT, TENANT = "eml1.node-agent.s3cret", "eml1.acme.s3cret"
WORKER = "10.0.3.7"


ASKED: list[str] = []
"""Every credential the door was asked about, in order."""


def door(token: str, route: str, fields: dict) -> dict:
    assert route == "whoami", route  # the route asks the door who is calling, nothing else
    ASKED.append(token)
    if token not in PRINCIPALS:
        raise AuthError("unknown credential")
    return PRINCIPALS[token]


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ca")
    tls.make_ca(folder, "test")
    return folder


def client(ca: Path, peer: str = WORKER) -> TestClient:
    return TestClient(build_app(door, node_signer=NodeSigner(ca)), client=(peer, 40000))


def ask(c: TestClient, csr: object, token: str = AGENT):  # type: ignore[no-untyped-def]
    return c.post("/v1/nodes/certificate", json={"csr": csr}, headers={"Authorization": f"Bearer {token}"})


def csr_for(ips: list[str], dns: list[str] = (), key=None) -> str:  # type: ignore[assignment]
    key = key or ec.generate_private_key(ec.SECP256R1())
    alt = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")]))
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_the_agent_gets_a_certificate_for_its_own_address_that_the_cluster_ca_verifies(ca):
    key_pem, csr = make_request(WORKER)
    reply = ask(client(ca), csr)
    assert reply.status_code == 200, reply.text
    answer = reply.json()["answer"]
    cert = check_issued(answer["certificate"], (ca / "ca.crt").read_text(), key_pem)
    assert answer["ca_certificate"] == (ca / "ca.crt").read_text()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == [WORKER, "127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days <= tls.NODE_DAYS + 1
    # An admin may ask as well (a node set up by hand); an IPv4-mapped peer is its IPv4 address.
    assert ask(client(ca, f"::ffff:{WORKER}"), csr, "eml1.admin.s3cret").status_code == 200


def test_a_tenant_or_no_credential_gets_no_certificate(ca):
    _, csr = make_request(WORKER)
    refused = ask(client(ca), csr, TENANT)
    assert refused.status_code == 403 and refused.json()["error"] == "AccessDenied"
    assert ask(client(ca), csr, "eml1.nobody.x").status_code == 401
    assert client(ca).post("/v1/nodes/certificate", json={"csr": csr}).status_code == 401


@pytest.mark.parametrize("ips, dns, field", [
    (["10.0.3.8"], [], "csr.subjectAltName.ip"),                  # another node's address
    ([WORKER, "10.0.3.8"], [], "csr.subjectAltName.ip"),          # its own and another's
    (["127.0.0.1"], [], "csr.subjectAltName.ip"),                 # loopback alone: not this node
    ([WORKER], ["elasticml-api.elasticml-aws-cpu.svc"], "csr.subjectAltName.dns"),  # a service's name
    ([WORKER], ["*.elasticml-aws-cpu.svc.cluster.local"], "csr.subjectAltName.dns"),
    ([], [], "csr.subjectAltName"),                               # no names at all
])
def test_a_request_for_anything_but_its_own_address_is_refused_naming_the_field(ca, ips, dns, field):
    reply = ask(client(ca), csr_for(ips, dns))
    assert reply.status_code == 400, reply.text
    assert reply.json()["field"] == field


@pytest.mark.parametrize("csr, field", [
    ("not a certificate request", "csr"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "csr"),
    ("x" * 5000, "csr"),
    (["a list"], "csr"),
    (None, "csr"),
])
def test_garbage_or_an_oversize_csr_is_refused(ca, csr, field):
    reply = ask(client(ca), csr)
    assert reply.status_code == 400 and reply.json()["field"] == field


def test_a_body_with_more_than_the_csr_or_too_large_is_refused(ca):
    _, csr = make_request(WORKER)
    c = client(ca)
    extra = c.post("/v1/nodes/certificate", json={"csr": csr, "days": 9999}, headers={"Authorization": f"Bearer {AGENT}"})
    assert extra.status_code == 400 and extra.json()["field"] == "body"
    huge = c.post("/v1/nodes/certificate", content=b"{" + b" " * 70_000 + b"}",
                  headers={"Authorization": f"Bearer {AGENT}", "Content-Type": "application/json"})
    assert huge.status_code == 413


def test_a_csr_the_requester_cannot_have_signed_is_refused(ca):
    """Proof of possession: one CSR's request under another's signature (RSA: signatures of one length)."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import rsa

    good, other = (x509.load_pem_x509_csr(csr_for([WORKER], key=rsa.generate_private_key(65537, 2048)).encode())
                   for _ in range(2))
    spliced = good.public_bytes(serialization.Encoding.DER).replace(good.signature, other.signature)
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{base64.encodebytes(spliced).decode()}-----END CERTIFICATE REQUEST-----\n"
    reply = ask(client(ca), pem)
    assert reply.status_code == 400 and reply.json()["field"] == "csr", reply.text


def test_the_route_is_rate_limited_per_client_address(ca):
    clock = [0.0]
    app = build_app(door, node_signer=NodeSigner(ca), per_address_per_s=1.0, clock=lambda: clock[0])
    c = TestClient(app, client=(WORKER, 40000))
    _, csr = make_request(WORKER)
    codes = [ask(c, csr).status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and codes[-1] == 429


def test_without_the_ca_the_server_has_no_such_route(ca):
    app = build_app(door)
    reply = TestClient(app, client=(WORKER, 40000)).post("/v1/nodes/certificate", json={},
                                                          headers={"Authorization": f"Bearer {AGENT}"})
    assert reply.status_code == 404
    with pytest.raises(ConfigError) as info:
        NodeSigner(ca.parent / "nowhere")
    assert info.value.field == "node_ca_dir"


def test_the_worker_asks_again_while_the_server_is_down_and_stops_at_a_refusal(ca, tmp_path):
    credential = tmp_path / "agent"
    credential.write_text(AGENT + "\n")
    credential.chmod(0o600)
    signer, calls, slept = NodeSigner(ca), [], []

    def flaky(route: str, body: dict) -> dict:
        calls.append(route)
        if len(calls) < 3:
            raise SchedulerNotRunning("https://head:8443 (ConnectError)")
        return {"certificate": signer.sign(body["csr"], WORKER), "ca_certificate": signer.ca_pem}

    made, ips = request_certificate(server="https://head:8443", ca_cert=ca / "ca.crt", credential=credential,
                                    out=tmp_path / "tls", ip=WORKER, post=flaky, sleep=slept.append)
    assert made == tmp_path / "tls" / "node.crt" and ips == [WORKER, "127.0.0.1"] and len(slept) == 2
    assert stat.S_IMODE((tmp_path / "tls" / "node.key").stat().st_mode) == 0o600
    assert (tmp_path / "tls" / "ca.crt").read_text() == (ca / "ca.crt").read_text()

    def refusing(route: str, body: dict) -> dict:
        raise ConfigError("may name only ...", field="csr.subjectAltName.ip")

    with pytest.raises(ConfigError):
        request_certificate(server="https://head:8443", ca_cert=ca / "ca.crt", credential=credential,
                            out=tmp_path / "other", ip=WORKER, post=refusing, sleep=slept.append)
    assert not (tmp_path / "other").exists()

    def down(route: str, body: dict) -> dict:
        raise SchedulerNotRunning("https://head:8443")

    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    with pytest.raises(SchedulerNotRunning, match="no certificate within 60s"):
        request_certificate(server="https://head:8443", ca_cert=ca / "ca.crt", credential=credential,
                            out=tmp_path / "other", ip=WORKER, post=down, sleep=sleep, clock=lambda: clock[0],
                            deadline_s=60)


def test_a_certificate_from_another_ca_or_for_another_key_is_not_written(ca, tmp_path):
    other = tmp_path / "other-ca"
    tls.make_ca(other, "other")
    key_pem, csr = make_request(WORKER)
    theirs = NodeSigner(other).sign(csr, WORKER)
    with pytest.raises(Exception, match="not one the cluster's CA signed"):
        check_issued(theirs, (ca / "ca.crt").read_text(), key_pem)
    _, another_csr = make_request(WORKER)
    with pytest.raises(Exception, match="another key"):
        check_issued(NodeSigner(ca).sign(another_csr, WORKER), (ca / "ca.crt").read_text(), key_pem)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tls_request_end_to_end_against_a_real_https_server_on_loopback(ca, tmp_path):
    """The server's certificate is the head's (tls.py, for 127.0.0.1); the worker trusts only the CA."""
    import uvicorn

    tls.make_node_cert(ca, tmp_path / "head", ips=["127.0.0.1"], names=["localhost"])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(door, node_signer=NodeSigner(ca)), host="127.0.0.1", port=port,
                                           log_level="warning", ssl_certfile=str(tmp_path / "head" / "node.crt"),
                                           ssl_keyfile=str(tmp_path / "head" / "node.key")))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        credential = tmp_path / "agent"
        credential.write_text(AGENT + "\n")
        credential.chmod(0o600)
        out = tmp_path / "worker"
        args = ["request", "--server", f"https://127.0.0.1:{port}", "--ca-cert", str(ca / "ca.crt"),
                "--credential", str(credential), "--out", str(out), "--deadline-s", "20"]
        assert tls.main(args) == 0
        cert = x509.load_pem_x509_certificate((out / "node.crt").read_bytes())
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes()))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]  # the peer it came from
        assert stat.S_IMODE((out / "node.key").stat().st_mode) == 0o600
        # A tenant's credential is refused at once (no retries to the deadline), and nothing is written.
        tenant = tmp_path / "tenant"
        tenant.write_text(TENANT + "\n")
        tenant.chmod(0o600)
        ASKED.clear()
        assert tls.main([*args[:5], "--credential", str(tenant), "--out", str(tmp_path / "t")]) == 2
        assert ASKED == [TENANT] and not (tmp_path / "t").exists()  # asked once: a refusal is not retried
        # A server whose certificate another CA signed is never believed.
        other = tmp_path / "other-ca"
        tls.make_ca(other, "other")
        assert tls.main([*args[:3], "--ca-cert", str(other / "ca.crt"), "--credential", str(credential),
                         "--out", str(tmp_path / "o"), "--deadline-s", "1"]) == 2
        assert not (tmp_path / "o").exists()
    finally:
        server.should_exit = server.force_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def served(ca, monkeypatch):
    """The route behind a real uvicorn on loopback, with the settings the API server runs with."""
    import uvicorn

    from elasticml.api import server as api_server

    monkeypatch.setattr(api_server, "BODY_TIMEOUT_S", 0.5)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(door, node_signer=NodeSigner(ca)), host="127.0.0.1", port=port,
                                           log_level="warning", **api_server.SERVER_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_forwarded_for_header_does_not_rename_the_peer_it_signs_for(served):
    """From loopback, a header naming another node's address gets no certificate for that address."""
    import httpx

    url, _ = served
    headers = {"Authorization": f"Bearer {AGENT}", "X-Forwarded-For": "10.9.9.9", "Forwarded": "for=10.9.9.9"}
    _, csr = make_request("10.9.9.9")
    reply = httpx.post(f"{url}/v1/nodes/certificate", json={"csr": csr}, headers=headers, timeout=10)
    assert reply.status_code == 400 and "ip" in reply.json()["field"], reply.text
    _, own = make_request("127.0.0.1")
    assert httpx.post(f"{url}/v1/nodes/certificate", json={"csr": own}, headers=headers, timeout=10).status_code == 200


def test_a_body_that_never_comes_is_answered_408_and_the_connection_closed(served):
    _, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("POST /v1/nodes/certificate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Authorization: Bearer {AGENT}\r\nContent-Length: 100\r\n\r\n{{").encode())
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
