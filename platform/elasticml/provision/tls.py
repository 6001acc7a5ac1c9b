"""Ray's internal TLS for cloud clusters: one CA per cluster, a certificate per node made at boot.

Ray encrypts and authenticates its gRPC traffic (GCS, raylets, workers, object transfers) when
`RAY_USE_TLS=1`, with this node's certificate and key and the CA that signed every node's
(`RAY_TLS_SERVER_CERT`, `RAY_TLS_SERVER_KEY`, `RAY_TLS_CA_CERT`: `tls_env`). How certificates
are provisioned:

1. `elasticml cluster credentials CLUSTER` makes the cluster's CA on the launching machine,
   beside the node agents' credential (`ca.key` mode 0600, `ca.crt`), once.
2. The CA travels to every node as the agent credential does (a launcher file mount; on KubeRay
   the Secret `elasticml-<cluster>-ca`, mounted read-only).
3. Each node, before `ray start`, makes its own key and a certificate for its addresses
   (`python -m elasticml.provision.tls node --ca-dir DIR --out DIR`; on KubeRay an init container,
   with the pod's IP), valid for NODE_DAYS.

Any node holding the CA key can mint a node certificate, which is the same trust every node
already has through Ray's cluster token: TLS here keeps traffic secret and tamper-proof against
whoever is on the network but not in the cluster. The dashboard and the Serve proxy are HTTP
services outside Ray's gRPC TLS (the dashboard listens on the head's loopback only; Serve has
its own TLS options).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from elasticml.atomic import write_atomic

CA_DAYS = 3650
NODE_DAYS = 397
"""What browsers accept for a leaf certificate; a node lives far shorter and makes a new one at each boot."""


def _key_pem(key: object) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                             serialization.NoEncryption()).decode()


def make_ca(folder: Path, cluster: str) -> Path:
    """The cluster's CA in `folder` (ca.key 0600, ca.crt), made once; returns the certificate's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path = folder / "ca.crt"
    if cert_path.exists() and (folder / "ca.key").exists():
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"elasticml {cluster} cluster CA"[:64])])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write_atomic(folder / "ca.key", _key_pem(key), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode(), mode=0o644)
    return cert_path


def node_addresses() -> list[str]:
    """This machine's IPv4 and IPv6 addresses (loopback included), as Ray's peers will dial them."""
    import psutil

    found = {"127.0.0.1"}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                found.add(str(ipaddress.ip_address(a.address.split("%")[0])))
            except ValueError:
                continue
    return sorted(found)


def make_node_cert(ca_dir: Path, out: Path, *, ips: list[str], names: list[str]) -> Path:
    """This node's key (0600) and certificate, signed by the cluster's CA, for `ips` and DNS `names`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    alt += [x509.DNSName(n) for n in names]
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips)[0][:64])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=NODE_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # Ray's peers are both servers and clients of each other.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    write_atomic(out / "node.key", _key_pem(key), mode=0o600)
    write_atomic(out / "node.crt", cert.public_bytes(serialization.Encoding.PEM).decode(), mode=0o644)
    write_atomic(out / "ca.crt", (ca_dir / "ca.crt").read_text(), mode=0o644)
    return out / "node.crt"


def tls_env(out: str | Path) -> dict[str, str]:
    """The environment that turns on Ray's TLS with the node certificate in `out`."""
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": f"{out}/node.crt", "RAY_TLS_SERVER_KEY": f"{out}/node.key",
            "RAY_TLS_CA_CERT": f"{out}/ca.crt"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m elasticml.provision.tls", description="This node's Ray TLS certificate.")
    sub = p.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="make this node's key and certificate from the cluster's CA")
    node.add_argument("--ca-dir", required=True, type=Path)
    node.add_argument("--out", required=True, type=Path)
    node.add_argument("--ip", action="append", default=[], help="an address to certify (default: every one this "
                      "machine has; repeat)")
    node.add_argument("--dns", action="append", default=[], help="a DNS name to certify (repeat)")
    args = p.parse_args(argv)
    try:
        ips = args.ip or node_addresses()
        for ip in ips:
            ipaddress.ip_address(ip)
        made = make_node_cert(args.ca_dir.expanduser(), args.out.expanduser(), ips=ips,
                              names=args.dns or [os.uname().nodename])
    except (OSError, ValueError) as exc:
        print(f"tls: error: {exc}", file=sys.stderr)
        return 2
    print(f"node certificate {made} for {', '.join(ips)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
