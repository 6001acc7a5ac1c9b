"""Ray token authentication, handled for the user.

Ray 2.60 turns token authentication on for local clusters. A client of such a
cluster needs `RAY_AUTH_MODE=token` *and* the token (`RAY_AUTH_TOKEN` alone is
not enough). elasticml keeps one token per local cluster, in a file readable
only by its owner, and hands it to every process it starts (head, worker
nodes, jobs) and to its own clients through `RAY_AUTH_TOKEN_PATH`. Security is
never turned off.
"""

from __future__ import annotations

import os
from pathlib import Path

from elasticml.errors import AuthError
from elasticml.secret_file import make_secret

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
TOKEN_VAR = "RAY_AUTH_TOKEN"


def ensure_token(path: Path) -> Path:
    """Create a random token at path (mode 0600) unless one is there; return path."""
    if path.exists():
        read_token(path)  # refuse an empty or unreadable token now, not at connect time
        return path
    return make_secret(path)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise AuthError(f"cannot read the cluster token at {path}: {exc.strerror}") from None
    if not token:
        raise AuthError(f"the cluster token at {path} is empty; delete it and run `elasticml cluster up` again")
    return token


def client_env(token_path: Path) -> dict[str, str]:
    """Environment a process needs to talk to a token-authenticated cluster."""
    return {AUTH_MODE_VAR: "token", TOKEN_PATH_VAR: str(token_path)}


def use_token_in_this_process(token_path: Path) -> None:
    """Make this process (and its children) authenticate to the cluster.

    Ray reads the mode and the token once and caches both; after changing the
    environment, its config and token cache are refreshed so that a process
    that already imported Ray picks the token up.
    """
    read_token(token_path)
    os.environ.update(client_env(token_path))
    os.environ.pop(TOKEN_VAR, None)  # a stale token in the env would win over the file
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # ray/_raylet.pyi declares only part of the extension

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def auth_headers(token_path: Path) -> dict[str, str]:
    """HTTP headers for Ray's dashboard (job submission, state API)."""
    return {"Authorization": f"Bearer {read_token(token_path)}"}
