"""Per-tenant API keys: a replica holds only sha256 digests, compares in constant time, logs no key."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its digest: hand the key to the tenant, put the digest in the app's api_keys."""
    key = "eml_" + secrets.token_urlsafe(32)
    return key, digest(key)


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
