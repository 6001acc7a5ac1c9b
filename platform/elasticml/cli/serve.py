"""`elasticml serve`: serving helpers (apps are deployed with `serve deploy` or `elasticml apps`)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from elasticml.cli.options import emit, json_option


@click.group()
def serve() -> None:
    """Serving helpers (the app itself is deployed with `serve deploy serve_apps/...yaml`)."""


@serve.command("keygen")
@click.argument("tenant")
@click.option("--file", "key_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Add the digest to this key file (an app's api_keys_file; mode 0600).")
@json_option
def serve_keygen(tenant: str, key_file: Path | None, as_json: bool) -> None:
    """A new API key for TENANT: give the key to the tenant; its digest goes to --file or under args.api_keys."""

    from elasticml.errors import ConfigError
    from elasticml.serve.auth import add_to_key_file, new_key

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", tenant):
        raise ConfigError("must be 1 to 63 letters, digits, - and _", field="tenant")
    key, digest = new_key()
    if key_file is not None:
        add_to_key_file(key_file, tenant, digest)
    if emit(as_json, {"tenant": tenant, "key": key, "digest": digest, "key_file": str(key_file) if key_file else None}):
        return
    click.echo(f"key (give to {tenant}, shown once): {key}")
    click.echo(f"added to {key_file}" if key_file is not None else f"api_keys entry: {{{tenant}: {digest}}}")
