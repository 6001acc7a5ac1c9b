"""Per-tenant API keys: a replica holds only sha256 digests, compares in constant time, logs no key."""

from __future__ import annotations

import hmac
import json
import re
import secrets
from pathlib import Path

from elasticml.secret_file import digest


def new_key() -> tuple[str, str]:
    """A fresh key and its digest: hand the key to the tenant, put the digest in the app's api_keys."""
    key = "eml_" + secrets.token_urlsafe(32)
    return key, digest(key)


MAX_KEY_FILE_BYTES = 1 << 20


def read_key_file(path: str | Path) -> dict[str, str]:
    """tenant -> digest from a key file; a ConfigError naming the file and what is wrong (never a value)."""
    from elasticml.errors import ConfigError

    file = Path(path).expanduser()
    try:
        if file.stat().st_size > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"larger than {MAX_KEY_FILE_BYTES} bytes", source=str(file), field="api_keys_file")
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no key file; create it with `elasticml serve keygen TENANT --file {path}`",
                          source=str(file), field="api_keys_file") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("not a JSON object of tenant -> sha256 digest", source=str(file), field="api_keys_file") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("must be a non-empty JSON object of tenant -> sha256 digest", source=str(file),
                          field="api_keys_file")
    for tenant, want in raw.items():
        if not (isinstance(want, str) and re.fullmatch(r"[0-9a-f]{64}", want)):
            raise ConfigError(f"the entry for tenant {tenant[:63]!r} is not a sha256 hex digest (store the digest, "
                              "never the key)", source=str(file), field="api_keys_file")
    return dict(raw)


def add_to_key_file(path: str | Path, tenant: str, key_digest: str) -> None:
    """Add (or replace) a tenant's digest in a key file, atomically, readable by its owner only."""
    from elasticml.atomic import write_atomic

    file = Path(path).expanduser()
    current = read_key_file(file) if file.exists() else {}
    write_atomic(file, json.dumps({**current, tenant: key_digest}, indent=2, sort_keys=True), mode=0o600)


class KeyRing:
    def __init__(self, digests: dict[str, str]) -> None:
        self._digests = dict(digests)

    @property
    def open(self) -> bool:
        return not self._digests

    def tenant_for(self, authorization: str | None, api_key: str | None) -> str | None:
        """The tenant whose key is in `Authorization: Bearer KEY` or `X-API-Key: KEY`; None if none matches."""
        key = api_key
        if authorization and authorization[:7].lower() == "bearer ":
            key = authorization[7:].strip()
        if not key:
            return None
        got = digest(key)
        found = None
        for tenant, want in self._digests.items():
            if hmac.compare_digest(got, want):  # every entry compared: no early exit to time
                found = tenant
        return found
