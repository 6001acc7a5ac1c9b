"""Ray's internal TLS for cloud clusters: one CA per cluster, a certificate per node made at boot.

Ray encrypts and authenticates its gRPC traffic (GCS, raylets, workers, object transfers) when
`RAY_USE_TLS=1`, with this node's certificate and key and the CA that signed every node's
(`RAY_TLS_SERVER_CERT`, `RAY_TLS_SERVER_KEY`, `RAY_TLS_CA_CERT`: `tls_env`). How certificates
are provisioned:

1. `elasticml cluster credentials CLUSTER` makes the cluster's CA on the launching machine,
   beside the node agents' credential (`ca.key` mode 0600, `ca.crt`), once.
2. The CA's certificate travels to every node; its key only to heads (AWS: a launcher file mount
   that the head never passes on to workers; KubeRay: the Secret `elasticml-<cluster>-ca`, whose
   key only heads' init containers and the API server mount).
3. A head, before `ray start`, makes its own key and a certificate for its addresses and names
   (`python -m elasticml.provision.tls node --ca-dir DIR --out DIR`; on KubeRay an init container).
4. A worker makes its own key and asks the head's API server to sign it for its own address
   (`python -m elasticml.provision.tls request`, as the node agent: `node_certs.py`), so a worker
   never holds a key that could certify any other address.

Both kinds are valid for NODE_DAYS. The dashboard and the Serve proxy are HTTP services outside
Ray's gRPC TLS (the dashboard listens on the head's loopback only; Serve has its own TLS options).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from elasticml.atomic import write_atomic
from elasticml.provision.node_certs import NODE_DAYS, issue, key_pem

CA_DAYS = 3650
__all__ = ["CA_DAYS", "NODE_DAYS", "main", "make_ca", "make_node_cert", "node_addresses", "tls_env"]


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
    write_atomic(folder / "ca.key", key_pem(key), mode=0o600)
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
    """This node's key (0600) and certificate, signed by the cluster's CA, for `ips` and DNS `names`
    (a head's way: it holds the CA's key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(ca_key, ca_cert, key.public_key(), ips=ips, names=names)
    write_atomic(out / "node.key", key_pem(key), mode=0o600)
    write_atomic(out / "node.crt", cert.public_bytes(serialization.Encoding.PEM).decode(), mode=0o644)  # type: ignore[attr-defined]
    write_atomic(out / "ca.crt", (ca_dir / "ca.crt").read_text(), mode=0o644)
    return out / "node.crt"


def tls_env(out: str | Path) -> dict[str, str]:
    """The environment that turns on Ray's TLS with the node certificate in `out`."""
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": f"{out}/node.crt", "RAY_TLS_SERVER_KEY": f"{out}/node.key",
            "RAY_TLS_CA_CERT": f"{out}/ca.crt"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m elasticml.provision.tls", description="This node's Ray TLS certificate.")
    sub = p.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="make this node's key and certificate from the cluster's CA (a head: it holds "
                          "the CA's key)")
    node.add_argument("--ca-dir", required=True, type=Path)
    node.add_argument("--out", required=True, type=Path)
    node.add_argument("--ip", action="append", default=[], help="an address to certify (default: every one this "
                      "machine has; repeat)")
    node.add_argument("--dns", action="append", default=[], help="a DNS name to certify (repeat)")
    ask = sub.add_parser("request", help="make this node's key and have the head's API server sign its certificate "
                         "(a worker: it never holds the CA's key)")
    ask.add_argument("--server", required=True, help="the API server, https://HOST:PORT")
    ask.add_argument("--ca-cert", required=True, type=Path, help="the cluster's CA certificate (checks the server and "
                     "the certificate it signs)")
    ask.add_argument("--credential", required=True, type=Path, help="the node agent's credential file (mode 0600)")
    ask.add_argument("--out", required=True, type=Path)
    ask.add_argument("--ip", default=None, help="this node's address as the server sees it (default: the one this "
                     "machine reaches the server from); 127.0.0.1 and localhost are always added")
    ask.add_argument("--deadline-s", type=float, default=900.0, help="keep asking (with backoff) while the server is "
                     "unreachable or busy, this long [default 900]")
    args = p.parse_args(argv)
    if args.command == "request":
        return _request(args)
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


def _request(args: argparse.Namespace) -> int:
    from elasticml.errors import ElasticMLError
    from elasticml.provision.node_certs import request_certificate

    try:
        made, ips = request_certificate(server=args.server, ca_cert=args.ca_cert.expanduser(),
                                        credential=args.credential.expanduser(), out=args.out.expanduser(),
                                        ip=args.ip, deadline_s=args.deadline_s)
    except (OSError, ValueError, ElasticMLError) as exc:
        print(f"tls: error: {exc}", file=sys.stderr)
        return 2
    print(f"node certificate {made} for {', '.join(ips)}, signed by {args.server}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
