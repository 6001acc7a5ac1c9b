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

import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

import click

from elasticml.atomic import write_atomic
from elasticml.errors import ConfigError
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
    cert = issue(ca_key, ca_cert, key.public_key(), ips=ips, names=names)  # type: ignore[arg-type]  # the CA's key is the EC signing key `tls` made, not any loadable key
    write_atomic(out / "node.key", key_pem(key), mode=0o600)
    write_atomic(out / "node.crt", cert.public_bytes(serialization.Encoding.PEM).decode(), mode=0o644)
    write_atomic(out / "ca.crt", (ca_dir / "ca.crt").read_text(), mode=0o644)
    return out / "node.crt"


def tls_env(out: str | Path) -> dict[str, str]:
    """The environment that turns on Ray's TLS with the node certificate in `out`."""
    return {"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": f"{out}/node.crt", "RAY_TLS_SERVER_KEY": f"{out}/node.key",
            "RAY_TLS_CA_CERT": f"{out}/ca.crt"}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """This node's Ray TLS certificate."""


@cli.command("node")
@click.option("--ca-dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="The cluster CA's folder (ca.crt, ca.key): a head's, which holds the key.")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Where node.key, node.crt and ca.crt are written.")
@click.option("--ip", "ips", multiple=True, help="An address to certify (repeat) [default: every one this machine has].")
@click.option("--dns", "names", multiple=True, help="A DNS name to certify (repeat) [default: this machine's name].")
def node(ca_dir: Path, out: Path, ips: tuple[str, ...], names: tuple[str, ...]) -> None:
    """Make this node's key and certificate from the cluster's CA (a head: it holds the CA's key)."""
    addresses = list(ips) or node_addresses()
    for ip in addresses:
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise ConfigError(str(exc), field="ip") from None
    try:
        made = make_node_cert(ca_dir.expanduser(), out.expanduser(), ips=addresses,
                              names=list(names) or [os.uname().nodename])
    except OSError as exc:
        raise ConfigError(str(exc), field="ca-dir") from None
    click.echo(f"node certificate {made} for {', '.join(addresses)}")


@cli.command("request")
@click.option("--server", required=True, help="The head's API server, https://HOST:PORT.")
@click.option("--ca-cert", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The cluster's CA certificate (checks the server and the certificate it signs).")
@click.option("--credential", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The node agent's credential file (mode 0600).")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Where node.key, node.crt and ca.crt are written.")
@click.option("--ip", default=None, help="This node's address as the server sees it [default: the one this machine "
              "reaches the server from]; 127.0.0.1 and localhost are always added.")
@click.option("--deadline-s", type=click.FloatRange(0, 86400), default=900.0, show_default=True,
              help="Keep asking (with backoff) while the server is unreachable or busy, this long.")
def request(server: str, ca_cert: Path, credential: Path, out: Path, ip: str | None, deadline_s: float) -> None:
    """Make this node's key and have the head's API server sign its certificate (a worker: it never holds
    the CA's key)."""
    from elasticml.provision.node_certs import request_certificate

    try:
        made, ips = request_certificate(server=server, ca_cert=ca_cert.expanduser(), credential=credential.expanduser(),
                                        out=out.expanduser(), ip=ip, deadline_s=deadline_s)
    except OSError as exc:
        raise ConfigError(str(exc), field="out") from None
    click.echo(f"node certificate {made} for {', '.join(ips)}, signed by {server}")


def main(argv: list[str] | None = None) -> int:
    from elasticml.entrypoint import run

    return run(cli, argv, prog="tls", prog_name="python -m elasticml.provision.tls")


if __name__ == "__main__":
    sys.exit(main())
