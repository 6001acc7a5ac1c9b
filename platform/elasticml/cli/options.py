"""What the command groups share: the --name, --address and --json options, printing a result as
JSON, and the way to the cluster's scheduler (over HTTP with a tenant's login, else a Ray driver)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click

name_option = click.option("--name", default="local", show_default=True, help="Cluster name (one state folder each).")

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")

address_option = click.option(
    "--address", default=None,
    help="GCS address (host:port) of a `ray up` or KubeRay cluster [default: $RAY_ADDRESS when it is one, "
         "else the local cluster --name].")


def emit(as_json: bool, payload: object) -> bool:
    """Print `payload` as JSON when asked; True when it did (the caller then prints nothing else)."""
    if as_json:
        click.echo(json.dumps(payload, default=str))
    return as_json


def connect(name: str, address: str | None) -> None:
    """A Ray driver connection to the cluster: --address, then $RAY_ADDRESS (a GCS address), else the local cluster."""
    import ray

    from elasticml.cluster import LocalCluster

    env = os.environ.get("RAY_ADDRESS", "")
    address = address or (env if env and "://" not in env else None)  # http:// is the job API, not the GCS
    if address:
        if not ray.is_initialized():
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        return
    LocalCluster(name).require_info().connect()


def scheduler_client(name: str, address: str | None = None):
    from elasticml.api.login import configured_client
    from elasticml.scheduler.client import SchedulerClient

    over_http = configured_client()  # a tenant's way in: its credential to the API server, no Ray token
    if over_http is not None:
        return over_http
    connect(name, address)
    return SchedulerClient.connect()


def read_yaml(path: Path) -> Any:
    from elasticml.yamlio import load_yaml

    return load_yaml(path, source=str(path))
