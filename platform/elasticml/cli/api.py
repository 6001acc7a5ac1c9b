"""`elasticml login`, `api serve`, `jobs` and `apps`: the API server, and a tenant's way to it.

`login` remembers the server and credential (elasticml.api.login reads them back); `jobs` and `apps`
go through that server with the tenant's credential, never a Ray token.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from elasticml.api.login import CA_ENV, configured_client, login_file
from elasticml.api.transport import ENDPOINT_ENV, HttpTransport
from elasticml.atomic import write_atomic
from elasticml.entrypoint import default_of
from elasticml.errors import ConfigError
from elasticml.scheduler.identity import CREDENTIAL_ENV
from elasticml.scheduler.spec import WorkloadSpec


@click.command("login")
@click.option("--endpoint", required=True, help="The API server, https:// (http:// on loopback only).")
@click.option("--credential", "credential", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Your credential file (`elasticml scheduler credential add` wrote it; mode 0600).")
@click.option("--ca-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None, envvar=CA_ENV,
              help=f"The cluster's CA certificate, to check the server's certificate by [default: ${CA_ENV}, else the "
                   "system's trust store].")
def login(endpoint: str, credential: Path, ca_cert: Path | None) -> None:
    """Remember the API server, your credential and the cluster's CA for later commands (written 0600)."""
    from elasticml.scheduler.client import SchedulerClient

    me = SchedulerClient(HttpTransport(endpoint, credential, verify=str(ca_cert) if ca_cert else True)).whoami()
    saved = {"endpoint": endpoint, "credential": str(credential.resolve()),
             "ca_cert": str(ca_cert.resolve()) if ca_cert else None}
    write_atomic(login_file(), json.dumps(saved) + "\n", mode=0o600)
    click.echo(f"logged in to {endpoint} as {me['role']} {me['name']}")


@click.group("api")
def api() -> None:
    """The API server: tenants reach the scheduler with their own credential; it holds the Ray token."""


@api.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where to listen; beyond loopback only with --tls-cert and --tls-key (HTTPS).")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True, help="Port to listen on.")
@click.option("--address", default=None, help="The Ray cluster's GCS address [default: $RAY_ADDRESS].")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="The server's certificate (PEM), e.g. the node's Ray TLS certificate from the cluster's CA.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Its private key (PEM).")
@click.option("--jobs", "with_jobs", is_flag=True,
              help="Also serve tenants' training jobs and Serve apps (/v1/jobs/*, /v1/apps/*), as the server on the "
                   "head does: only where this process shares the head's ELASTICML_HOME (on the head, or in a "
                   "container of the head's pod), since each job's driver, on the head, reads the credential and "
                   "config files written there.")
@click.option("--node-ca-dir", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="The cluster CA's folder (ca.crt, ca.key; on the head only): also sign workers' Ray TLS "
                   "certificates for the node agent (/v1/nodes/certificate), each for its own address.")
def serve(host: str, port: int, address: str | None, tls_cert: Path | None, tls_key: Path | None,
          with_jobs: bool, node_ca_dir: Path | None) -> None:
    """Serve the scheduler's door (and with --jobs tenants' jobs and apps) over HTTP (HTTPS beyond loopback)."""
    import uvicorn

    from elasticml.api.server import SERVER_OPTIONS, cluster_app

    if host not in ("127.0.0.1", "localhost", "::1") and not (tls_cert and tls_key):
        raise ConfigError("beyond loopback the server speaks HTTPS only: pass --tls-cert and --tls-key", field="host")
    uvicorn.run(cluster_app(address, with_jobs=with_jobs, node_ca=node_ca_dir), host=host, port=port, log_level="warning",
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
                **SERVER_OPTIONS)


def _jobs_transport() -> HttpTransport:
    client = configured_client()
    if client is None:
        raise ConfigError("jobs go through the API server: `elasticml login --endpoint URL --credential FILE`, "
                          f"or ${ENDPOINT_ENV} with ${CREDENTIAL_ENV}", field="endpoint")
    return client._transport  # type: ignore[return-value]  # configured_client builds the client on an HttpTransport


@click.group("jobs")
def jobs() -> None:
    """Your training jobs, through the API server with your credential (no Ray token)."""


@jobs.command("submit")
@click.argument("config_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--priority", default=None, help="critical | high | normal | low | preemptible, up to your ceiling "
              "[default: normal for a training job, low for a sweep].")
@click.option("--expected-hours", type=float, default=default_of(WorkloadSpec, "expected_hours"), show_default=True, help="How long the job should take.")
@click.option("--deadline-hours", type=float, default=None, help="Finish within this many hours (the scheduler "
              "then weighs spot against the deadline).")
@click.option("--kind", type=click.Choice(["train", "tune"]), default="train", show_default=True,
              help="train: a TrainConfig YAML (a `teacher: job:ID` of yours makes it a distillation, `init_from: "
                   "job:ID` a fine-tune); tune: a sweep's YAML (data, storage_path, name, lrs or lr_min/lr_max, "
                   "samples, steps, workers, concurrent).")
def jobs_submit(config_file: Path, priority: str | None, expected_hours: float, deadline_hours: float | None,
                kind: str) -> None:
    """Train (or sweep) with CONFIG_FILE, as your tenant, on the platform's own entrypoint."""
    from elasticml.yamlio import load_yaml

    body = {"kind": kind, "config": load_yaml(config_file, source=str(config_file)),
            "expected_hours": expected_hours, "deadline_hours": deadline_hours}
    if priority is not None:
        body["priority"] = priority
    click.echo(json.dumps(_jobs_transport().post("jobs/submit", body)))


@jobs.command("status")
@click.argument("submission_id")
def jobs_status(submission_id: str) -> None:
    """The status of your job SUBMISSION_ID (`jobs submit` printed it), as JSON."""
    click.echo(json.dumps(_jobs_transport().post("jobs/status", {"submission_id": submission_id})))


@jobs.command("logs")
@click.argument("submission_id")
def jobs_logs(submission_id: str) -> None:
    """The logs of your job SUBMISSION_ID so far (the last part of a long log, secrets redacted)."""
    click.echo(_jobs_transport().post("jobs/logs", {"submission_id": submission_id})["logs"], nl=False)


@jobs.command("stop")
@click.argument("submission_id")
def jobs_stop(submission_id: str) -> None:
    """Stop your job SUBMISSION_ID."""
    click.echo(json.dumps(_jobs_transport().post("jobs/stop", {"submission_id": submission_id})))


@jobs.command("list")
def jobs_list() -> None:
    """Your jobs and their statuses, as JSON."""
    click.echo(json.dumps(_jobs_transport().post("jobs/list", {})))


@click.group("apps")
def apps() -> None:
    """Your Serve apps and their API keys, through the API server with your credential (no Ray token)."""


@apps.command("deploy")
@click.argument("config_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--job", "job", default=None,
              help="Serve the newest checkpoint of this job of yours (its submission id); sets `checkpoint`.")
def apps_deploy(config_file: Path, job: str | None) -> None:
    """Deploy or update an app from CONFIG_FILE (a ServeConfig YAML: name, checkpoint, preset...)."""
    from elasticml.yamlio import load_yaml

    config = load_yaml(config_file, source=str(config_file))
    if not isinstance(config, dict):
        raise ConfigError("must be a mapping of ServeConfig fields", field="config")
    if job is not None:
        config["checkpoint"] = f"job:{job}"
    click.echo(json.dumps(_jobs_transport().post("apps/deploy", {"config": config})))


@apps.command("status")
@click.argument("app")
def apps_status(app: str) -> None:
    """APP's Serve status, route and number of keys."""
    click.echo(json.dumps(_jobs_transport().post("apps/status", {"app": app})))


@apps.command("list")
def apps_list() -> None:
    """Your apps."""
    click.echo(json.dumps(_jobs_transport().post("apps/list", {})))


@apps.command("delete")
@click.argument("app")
def apps_delete(app: str) -> None:
    """Delete APP (its keys go with it)."""
    click.echo(json.dumps(_jobs_transport().post("apps/delete", {"app": app})))


@apps.group("keys")
def apps_keys() -> None:
    """APP's API keys: the server keeps their digests; a key is shown once, when minted."""


@apps_keys.command("mint")
@click.argument("app")
def keys_mint(app: str) -> None:
    """A new key for APP (printed once, as JSON); it works once this answers."""
    click.echo(json.dumps(_jobs_transport().post("apps/keys/mint", {"app": app})))


@apps_keys.command("list")
@click.argument("app")
def keys_list(app: str) -> None:
    """APP's key ids and when each was minted."""
    click.echo(json.dumps(_jobs_transport().post("apps/keys/list", {"app": app})))


@apps_keys.command("revoke")
@click.argument("app")
@click.argument("key_id")
def keys_revoke(app: str, key_id: str) -> None:
    """Revoke KEY_ID of APP; it is refused once this answers."""
    click.echo(json.dumps(_jobs_transport().post("apps/keys/revoke", {"app": app, "key_id": key_id})))
