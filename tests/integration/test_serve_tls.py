"""Serve's ingress over HTTPS on loopback, with a self-signed certificate: what a config that listens
beyond loopback gets (serve_apps/completion-gpu.yaml), keys and all."""

from __future__ import annotations

import datetime
import ssl

import httpx
import pytest
import torch

from elasticml.cluster.local import free_port
from elasticml.models import SIZES, build_model
from elasticml.serve.auth import new_key
from elasticml.train.checkpoint import write_checkpoint

pytestmark = pytest.mark.integration


def self_signed(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").chmod(0o600)
    return folder / "tls.key", folder / "tls.crt"


def test_the_completion_app_answers_over_https_and_not_over_plain_http(local_cluster, tmp_path):
    from ray import serve

    from elasticml.serve.completion import build_app

    key_file, cert_file = self_signed(tmp_path)
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    write_checkpoint(ckpt, model_state=build_model("tiny").state_dict(), optim_state=None,
                     model_config=SIZES["tiny"], step=3)
    key, key_digest = new_key()
    local_cluster.require_info().connect()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "ssl_keyfile": str(key_file),
                              "ssl_certfile": str(cert_file)})
    try:
        serve.run(build_app({"checkpoint": str(ckpt), "precision": "fp32", "api_keys": {"acme": key_digest}}),
                  name="tls", route_prefix="/")
        trusted = ssl.create_default_context(cafile=str(cert_file))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted, timeout=60) as client:
            r = client.post("/v1/completions", json={"prompt": "def f(", "max_tokens": 4},
                            headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["tokens"] == 4, r.text
            assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 401
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
            httpx.get(f"https://127.0.0.1:{port}/healthz", timeout=30)
        with pytest.raises(httpx.HTTPError):  # nothing answers plain HTTP on the port
            r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
            r.raise_for_status()
    finally:
        serve.shutdown()
