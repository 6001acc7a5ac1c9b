"""Node certificates: how one is issued, and a worker's by request (its key never leaves it, the CA's
key never reaches it). `tls.py` (the CA, a head's own certificate, the command line) builds on this.

Who owns what: the head holds the cluster CA's key and signs (`NodeSigner`, which the API server's
`POST /v1/nodes/certificate` calls); a worker makes its own key pair and a certificate signing
request (CSR) and sends the CSR as the node agent (`request_certificate`, which
`python -m elasticml.provision.tls request` runs before `ray start`).

The one rule the head keeps: a certificate names only the address the request came from. Its IP
SANs are the TCP peer's address and, optionally, 127.0.0.1; its one DNS name may be `localhost`.
Whatever else the CSR asks for (another address, a service's name, a wildcard, a CA's powers, a
long life) is refused naming the field, or never copied: the head builds the certificate from the
checked names and the CSR's public key only. So the agent credential, which every worker has, lets
a worker certify itself and nothing else; a head certifies its own names with the key it holds.

Glossary: peer, the address the server's TCP connection came from (`request.client.host`);
SAN, a certificate's subjectAltName.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from elasticml.atomic import write_atomic
from elasticml.errors import AccessDenied, AuthError, ConfigError, SchedulerError, SchedulerNotRunning

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPrivateKeyTypes, CertificatePublicKeyTypes, PrivateKeyTypes)

log = logging.getLogger(__name__)

ROUTE = "nodes/certificate"
"""The API server's route (POST /v1/nodes/certificate); the node agent (or an admin) only."""
MAX_CSR_BYTES = 4096
"""A P-256 CSR is about 500 bytes of PEM, an RSA-4096 one under 2,000."""
MAX_NAMES = 4
LOOPBACK = ipaddress.ip_address("127.0.0.1")
DNS_NAMES = ("localhost",)
BACKOFF_S = (1.0, 30.0)
"""The first and the longest wait between two requests while the server does not answer."""
REQUEST_TIMEOUT_S = 30.0


NODE_DAYS = 397
"""What browsers accept for a leaf certificate; a node lives far shorter and makes a new one at each boot. Not
shorter: Ray reads its certificate once, when it starts, and cannot take a new one, so a certificate that
expired under a long-lived node would cut it off; what bounds a worker's certificate is its address, not its age."""


def key_pem(key: PrivateKeyTypes) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def issue(ca_key: CertificateIssuerPrivateKeyTypes, ca_cert: x509.Certificate, public_key: CertificatePublicKeyTypes, *,
          ips: list[str], names: list[str]) -> x509.Certificate:
    """A node certificate for `public_key`, signed by the CA, for `ips` and DNS `names` (an x509.Certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    alt += [x509.DNSName(n) for n in names]
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips)[0][:64])]))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=NODE_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # Ray's peers are both servers and clients of each other.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))



def peer_address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The requester's address as a certificate names it (an IPv4-mapped IPv6 peer as its IPv4)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        raise ConfigError(f"the request came from {peer[:60]!r}, not an IP address", field="peer") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class NodeSigner:
    """The head's signer: the CA in `ca_dir` (ca.crt, ca.key), read once."""

    def __init__(self, ca_dir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            self.ca_pem = (ca_dir / "ca.crt").read_text()
            self._ca_cert = x509.load_pem_x509_certificate(self.ca_pem.encode())
            self._ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"no usable CA (ca.crt and ca.key) in {ca_dir}: {type(exc).__name__}",
                              field="node_ca_dir") from None

    def sign(self, csr_pem: object, peer: str) -> str:
        """The PEM certificate for a CSR from `peer`; ConfigError naming the field when it asks for more."""
        from cryptography.hazmat.primitives import serialization

        public_key, ips, names = check_csr(csr_pem, peer_address(peer))
        cert = issue(self._ca_key, self._ca_cert, public_key, ips=ips, names=names)  # type: ignore[arg-type]  # the CA's key is the EC signing key `tls` made, not any loadable key
        log.info("node certificate for %s (serial %x) until %s", ", ".join(ips + names), cert.serial_number,
                 cert.not_valid_after_utc.isoformat())
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def check_csr(csr_pem: object, peer: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[Any, list[str], list[str]]:
    """(public key, IPs, DNS names) of a CSR that asks for `peer` (and loopback, localhost) only."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if type(csr_pem) is not str or len(csr_pem) > MAX_CSR_BYTES:
        raise ConfigError(f"must be a PEM certificate request of at most {MAX_CSR_BYTES} characters", field="csr")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        valid = csr.is_signature_valid
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ConfigError(f"must name this node's address {peer} as an IP subjectAltName",
                          field="csr.subjectAltName") from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise ConfigError(f"is not a certificate request this server reads ({type(exc).__name__})", field="csr") from None
    if not valid:
        raise ConfigError("its signature does not match its key (the requester must hold the key)", field="csr")
    key = csr.public_key()
    if not ((isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1"))
            or (isinstance(key, rsa.RSAPublicKey) and 2048 <= key.key_size <= 4096)):
        raise ConfigError("must be an EC P-256 or P-384 key, or RSA of 2048 to 4096 bits", field="csr.key")
    general = list(san)
    if len(general) > MAX_NAMES:
        raise ConfigError(f"names at most {MAX_NAMES} (this node's address, 127.0.0.1, localhost)",
                          field="csr.subjectAltName")
    ips: list[str] = []
    names: list[str] = []
    for g in general:
        if isinstance(g, x509.IPAddress) and g.value in (peer, LOOPBACK):
            ips.append(str(g.value))
        elif isinstance(g, x509.IPAddress):
            raise ConfigError(f"may name only the address this request came from, {peer} (and 127.0.0.1), not "
                              f"{g.value}", field="csr.subjectAltName.ip")
        elif isinstance(g, x509.DNSName) and g.value.lower() in DNS_NAMES:
            names.append(g.value.lower())
        else:
            raise ConfigError(f"may name only {', '.join(DNS_NAMES)} as a DNS name (a head certifies its service "
                              f"names itself), not {str(getattr(g, 'value', g))[:80]!r}", field="csr.subjectAltName.dns")
    if str(peer) not in ips:
        raise ConfigError(f"must name this node's address {peer} as an IP subjectAltName", field="csr.subjectAltName.ip")
    return key, sorted(set(ips), key=lambda ip: (ip != str(peer), ip)), sorted(set(names))


# -- the worker's side ----------------------------------------------------------------
def local_address(server: str) -> str:
    """The address this machine reaches `server` from (no packet is sent: a UDP socket's route)."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, parts.port or 443))
        return str(s.getsockname()[0])


def make_request(ip: str) -> tuple[str, str]:
    """(key PEM, CSR PEM): a new P-256 key and a request for `ip`, 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    ips = sorted({ipaddress.ip_address(ip), LOOPBACK}, key=lambda a: (a == LOOPBACK, str(a)))
    alt = [x509.IPAddress(a) for a in ips] + [x509.DNSName(n) for n in DNS_NAMES]
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(ips[0]))]))
           .add_extension(x509.SubjectAlternativeName(alt), critical=False)
           .sign(key, hashes.SHA256()))
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


def check_issued(cert_pem: object, ca_pem: str, key_text: str) -> Any:
    """The certificate the server sent, once it is shown to be the CA's, for our key, valid now, and no CA."""
    import datetime as dt

    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    if type(cert_pem) is not str or len(cert_pem) > 16 * MAX_CSR_BYTES:
        raise SchedulerError("the server's answer holds no certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SchedulerError(f"the server's certificate is not one the cluster's CA signed ({type(exc).__name__})") from None
    mine = serialization.load_pem_private_key(key_text.encode(), password=None).public_key()
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != mine.public_bytes(*raw):
        raise SchedulerError("the server's certificate is for another key")
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SchedulerError("the server's certificate is not valid now (check this machine's clock)")
    if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
        raise SchedulerError("the server's certificate is a CA's")
    return cert


Post = Callable[[str, dict[str, Any]], Any]
"""(route, body) -> the answer: the API server over HTTPS as the agent (tests pass their own)."""


def request_certificate(*, server: str, ca_cert: Path, credential: Path, out: Path, ip: str | None = None,
                        deadline_s: float = 900.0, post: Post | None = None,
                        sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic) -> tuple[Path, list[str]]:
    """Make this node's key, have `server` sign it, check the certificate against `ca_cert`, then write
    out/node.key (0600), node.crt and ca.crt. While the server is unreachable or failing (a worker may
    boot before the head's API server answers) ask again, with backoff, until `deadline_s`; a refusal
    (a bad credential, the wrong role, a CSR it will not sign) ends it at once. Returns (node.crt, IPs)."""
    ca_pem = ca_cert.read_text()
    if post is None:
        from elasticml.api.transport import HttpTransport

        post = HttpTransport(server, credential, verify=str(ca_cert), timeout_s=REQUEST_TIMEOUT_S).post
    address = ip or local_address(server)
    key_text, csr_pem = make_request(address)
    ends, wait = clock() + deadline_s, BACKOFF_S[0]
    while True:
        try:
            answer = post(ROUTE, {"csr": csr_pem})
            cert = check_issued(answer.get("certificate") if isinstance(answer, dict) else None, ca_pem, key_text)
            break
        except (AuthError, AccessDenied, ConfigError):
            raise
        except (SchedulerNotRunning, SchedulerError) as exc:
            if clock() + wait > ends:
                raise SchedulerNotRunning(f"{server}: no certificate within {deadline_s:.0f}s ({exc})") from None
            log.warning("no certificate yet from %s (%s); asking again in %.0fs", server, exc, wait)
            sleep(wait * random.uniform(0.8, 1.2))
            wait = min(BACKOFF_S[1], wait * 2)
    from cryptography.hazmat.primitives import serialization

    write_atomic(out / "node.key", key_text, mode=0o600)
    write_atomic(out / "node.crt", cert.public_bytes(serialization.Encoding.PEM).decode(), mode=0o644)
    write_atomic(out / "ca.crt", ca_pem, mode=0o644)
    from cryptography import x509

    ips = [str(a) for a in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
           .get_values_for_type(x509.IPAddress)]
    return out / "node.crt", ips

