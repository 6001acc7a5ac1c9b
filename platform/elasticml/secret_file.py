"""The one way the platform makes and reads a secret file: the Ray token, the checkpoint key, the
audit key (a credential is a secret file too, read by scheduler/identity.py with its own shape).

Made on first use: random, hex, mode 0600, written atomically (a crash leaves the old file or
none, never half a key); never replaced once there, since what it signed or admitted depends on
it. Read with the same checks everywhere: bounded size, not readable by group or others, hex of
at least the length asked for; each failure is the caller's own error type, naming the file and
what to do, never the secret.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from elasticml.atomic import write_atomic
from elasticml.errors import ElasticMLError

MAX_BYTES = 4096
"""The most a secret file may hold (a key is 64 hex characters; anything larger was mounted by mistake)."""


def digest(secret: str) -> str:
    """What is kept of a credential or an API key instead of the secret itself: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def make_secret(path: Path, *, nbytes: int = 32) -> Path:
    """A random `nbytes` secret in hex at `path` (0600), unless a file is there; returns `path`."""
    if not path.exists():
        write_atomic(path, secrets.token_hex(nbytes) + "\n", mode=0o600)
    return path


def read_secret(path: Path, *, what: str, error: type[ElasticMLError], min_bytes: int = 16, hint: str = "",
                shown: str | None = None) -> bytes:
    """The secret in `path` (hex) as bytes, or `error` naming `what` and the file (`shown`, default the
    path) and, after a `;`, `hint`."""
    tail = f"; {hint}" if hint else ""
    name = shown or str(path)
    try:
        info = os.stat(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise error(f"{what} {name} is readable by others; `chmod 600 {path}`")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{what} {name} does not exist{tail}") from None
    except OSError as exc:
        raise error(f"{what} {name} is unreadable ({type(exc).__name__}){tail}") from None
    try:
        key = bytes.fromhex(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(raw) > MAX_BYTES or len(key) < min_bytes:
        raise error(f"{what} {name} is not {min_bytes} or more bytes in hex{tail}")
    return key
