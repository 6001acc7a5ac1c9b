"""`elasticml scheduler`: start the cluster's scheduler, place workloads, ask it why, manage who may call it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from elasticml.cli.options import (
    address_option,
    connect,
    emit,
    json_option,
    name_option,
    read_yaml,
    scheduler_client,
)
from elasticml.entrypoint import default_of
from elasticml.scheduler.identity import ROLES
from elasticml.scheduler.settings import ControllerConfig


@click.group()
def scheduler() -> None:
    """Place workloads on spot, on-demand or reserved capacity, and explain why."""



def _echo_records(records: list[dict]) -> None:
    for d in records:
        allocs = d.get("allocations", [])
        where = ", ".join(f"{a['workers']}x {a['node_type']} ({a['market']})" for a in allocs)
        cost = f" ${d['hourly_cost']:.4f}/h" if allocs else ""
        click.echo(f"{d['workload']}: {d['action']}{' -> ' + where if where else ''}{cost}" if "workload" in d
                   else f"{d.get('event', d.get('action'))}")
        click.echo(f"  why: {d.get('reason', d.get('why', ''))}")
        if d.get("ray_options"):
            click.echo(f"  ray options: {json.dumps(d['ray_options'])}")


def _echo_placement(p) -> None:
    where = ", ".join(f"{a.workers}x {a.node_type} ({a.market})" for a in p.allocations)
    click.echo(f"{p.workload}: {p.state}{' -> ' + where if where else ''}" + (f" ${p.hourly_cost:.4f}/h" if where else ""))
    click.echo(f"  why: {p.reason}")
    if p.ray_options:
        click.echo(f"  ray options: {json.dumps(p.ray_options)}")


@scheduler.command("start")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The running cluster's YAML [default: $ELASTICML_CLUSTER_CONFIG, else the launcher's "
                   "~/ray_bootstrap_config.yaml].")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite ledger on the head [default: ~/.elasticml/scheduler/CLUSTER/ledger.sqlite].")
@click.option("--tick-seconds", type=float, default=None,
              help="Controller period [default: $ELASTICML_CONTROLLER_TICK_S, else "
                   f"{default_of(ControllerConfig, 'tick_seconds'):g}].")
@click.option("--seconds-per-hour", type=float, default=None,
              help="Wall seconds per scheduler hour [default: $ELASTICML_SECONDS_PER_HOUR, else "
                   f"{default_of(ControllerConfig, 'seconds_per_hour'):g}].")
@click.option("--spot-market", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A replayed spot market's file (written by `cluster up --spot-trace`).")
@click.option("--live-prices", "live_prices_s", type=float, default=None,
              help="Refresh spot prices and placement scores from EC2 every this many seconds (AWS clusters; "
                   "$ELASTICML_EC2_ENDPOINT for another endpoint).")
@click.option("--api-host", default="127.0.0.1", show_default=True,
              help="Where the API server listens; beyond loopback it needs a certificate (HTTPS only).")
@click.option("--api-port", type=click.IntRange(0, 65535), default=0, help="[default: a free port]")
@click.option("--api-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="The API server's certificate [default beyond loopback: the node's Ray TLS certificate, "
                   "$RAY_TLS_SERVER_CERT].")
@click.option("--api-key", "api_key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Its private key [default beyond loopback: $RAY_TLS_SERVER_KEY].")
@click.option("--node-ca-dir", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="The cluster CA's folder on the head (ca.crt, ca.key): the API server also signs workers' Ray "
                   "TLS certificates, each for its own address (/v1/nodes/certificate).")
@name_option
@address_option
@json_option
def scheduler_start(config_path: Path | None, ledger_path: Path | None, tick_seconds: float | None,
                    seconds_per_hour: float | None, spot_market: Path | None, live_prices_s: float | None,
                    api_host: str, api_port: int, api_cert: Path | None, api_key: Path | None,
                    node_ca_dir: Path | None, name: str,
                    address: str | None, as_json: bool) -> None:
    """Create the cluster's scheduler (once per cluster; `cluster up` does it for local clusters)."""
    from dataclasses import replace

    from elasticml.cluster import load_cluster_spec
    from elasticml.scheduler.client import SchedulerClient, running_cluster_config

    spec = load_cluster_spec(running_cluster_config(config_path))  # refuse a bad config before touching the cluster
    controller = ControllerConfig.from_env()
    overrides: dict[str, Any] = {k: v for k, v in (("tick_seconds", tick_seconds), ("seconds_per_hour", seconds_per_hour),
                                   ("live_prices_seconds", live_prices_s)) if v is not None}
    from elasticml.cluster.spot_market import SpotMarket

    if spot_market is not None:
        SpotMarket.load(spot_market)  # readable and valid before the actor is made to read it
        overrides["market"] = str(spot_market.resolve())
        # A compressed market's ticks last seconds: the controller must look more often than that.
        overrides.setdefault("tick_seconds", min(controller.tick_seconds, 0.5))
        if SpotMarket.load(spot_market).settings.notices:
            overrides["unfillable_seconds"] = None  # see ControllerConfig.unfillable_seconds
    controller = replace(controller, **overrides)
    connect(name, address)
    st = SchedulerClient.start(spec, ledger_path=ledger_path, controller=controller).status()
    if spot_market is not None and SpotMarket.load(spot_market).settings.notices:
        from elasticml.cluster.market_driver import start_driver

        start_driver(spot_market.resolve(), [p["node_type"] for p in st["pools"] if p["market"] == "spot"])
    import os

    from elasticml.api.actor import start_api_server

    if api_host not in ("127.0.0.1", "localhost"):  # the node's certificate from the cluster's CA, by default
        api_cert = api_cert or (Path(os.environ["RAY_TLS_SERVER_CERT"]) if os.environ.get("RAY_TLS_SERVER_CERT") else None)
        api_key = api_key or (Path(os.environ["RAY_TLS_SERVER_KEY"]) if os.environ.get("RAY_TLS_SERVER_KEY") else None)
    # Tenants' way in, with their own credential.
    url = start_api_server(host=api_host, port=api_port, tls_cert=str(api_cert) if api_cert else None,
                           tls_key=str(api_key) if api_key else None,
                           node_ca=str(node_ca_dir.resolve()) if node_ca_dir else None)
    if emit(as_json, {"cluster": st["cluster"], "config": st["config"], "api_url": url,
                       "pools": [{"node_type": p["node_type"], "market": p["market"]} for p in st["pools"]]}):
        return
    click.echo(f"scheduler of cluster {st['cluster']!r} ({st['config']}): pools "
               + ", ".join(f"{p['node_type']} ({p['market']})" for p in st["pools"]))
    click.echo(f"API server: {url} (tenants: `elasticml login --endpoint {url} --credential FILE`)")


@scheduler.command("submit")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@name_option
@address_option
@json_option
def scheduler_submit(spec_file: Path, name: str, address: str | None, as_json: bool) -> None:
    """Place the workload described in SPEC_FILE (YAML)."""
    from elasticml.scheduler.spec import WorkloadSpec

    raw = read_yaml(spec_file)
    spec = WorkloadSpec.from_dict(raw, source=str(spec_file))  # refuse bad specs before touching the cluster
    placement = scheduler_client(name, address).place(spec)
    if not emit(as_json, placement.to_dict()):
        _echo_placement(placement)


@scheduler.command("validate")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def scheduler_validate(spec_file: Path, as_json: bool) -> None:
    """Check SPEC_FILE offline, as the scheduler's door would (no cluster): exit 0 when valid, 2 naming the field."""
    from elasticml.scheduler.spec import WorkloadSpec

    spec = WorkloadSpec.from_dict(read_yaml(spec_file), source=str(spec_file))
    if emit(as_json, {"file": str(spec_file), "valid": True, "spec": spec.to_dict()}):
        return
    click.echo(f"{spec_file}: valid ({spec.kind} {spec.name} of tenant {spec.tenant}, {spec.priority} priority, "
               f"{spec.min_workers}-{spec.max_workers} workers)")


@scheduler.command("status")
@name_option
@address_option
@json_option
def scheduler_status(name: str, address: str | None, as_json: bool) -> None:
    """Pools, what runs where, what the controller steers, and the queue."""
    st = scheduler_client(name, address).status()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"cluster {st['cluster']} ({st['config']}), price catalog {st['catalog_version']}")
    click.echo(f"  {'POOL':<16} {'MARKET':<10} {'INSTANCE':<12} {'$/NODE-H':>9} NODES")
    for p in st["pools"]:
        flag = "  INTERRUPTED" if p["interrupted"] else ""
        click.echo(f"  {p['node_type']:<16} {p['market']:<10} {p['instance_type']:<12} {p['hourly_price']:>9.4f} "
                   f"{p['used_nodes']}/{p['max_nodes']}{flag}")
    for w, allocs in st["running"].items():
        click.echo(f"  running {w}: " + ", ".join(f"{a['workers']}x {a['node_type']}" for a in allocs))
    for w, s in st["steered"].items():
        click.echo(f"  steered {w}: {s['policy']} on {s['instance']}, {s['progress_hours']:.3g}h done, {s['restarts']} restarts")
    if st["queued"]:
        click.echo(f"  queued: {', '.join(st['queued'])}")
    if st["paused"]:
        click.echo(f"  paused (waiting for spot): {', '.join(st['paused'])}")


@scheduler.command("explain")
@click.argument("workload")
@name_option
@address_option
@json_option
def scheduler_explain(workload: str, name: str, address: str | None, as_json: bool) -> None:
    """Every decision taken for WORKLOAD, with its reason (`_events` for node losses)."""
    records = scheduler_client(name, address).explain(workload)
    if emit(as_json, {"workload": workload, "records": records}):
        return
    if not records:
        click.echo(f"no decisions recorded for {workload!r}")
    _echo_records(records)


@scheduler.command("finish")
@click.argument("workload")
@name_option
@address_option
@json_option
def scheduler_finish(workload: str, name: str, address: str | None, as_json: bool) -> None:
    """Mark WORKLOAD done: its capacity goes to the queue and to cheaper moves."""
    scheduler_client(name, address).finish(workload)
    if emit(as_json, {"workload": workload, "finished": True}):
        return
    click.echo(f"{workload}: finished")


@scheduler.command("interrupt")
@click.argument("node_type")
@name_option
@address_option
@json_option
def scheduler_interrupt(node_type: str, name: str, address: str | None, as_json: bool) -> None:
    """Report a spot interruption notice for NODE_TYPE; its work is re-placed."""
    result = scheduler_client(name, address).interrupt(node_type)
    if emit(as_json, {"node_type": node_type, **result}):
        return
    _echo_records(result["decisions"])
    click.echo(f"drained {len(result['drained_nodes'])} node(s) of {node_type} as preempted")


@scheduler.command("whoami")
@name_option
@address_option
@json_option
def scheduler_whoami(name: str, address: str | None, as_json: bool) -> None:
    """The principal and role your credential ($ELASTICML_CREDENTIAL_PATH, else the cluster's admin file) is."""
    me = scheduler_client(name, address).whoami()
    if emit(as_json, me):
        return
    click.echo(f"{me['name']} ({me['role']})")


@scheduler.group("credential")
def credential() -> None:
    """Who may call the scheduler: admins, tenants and node agents, each with its own credential file."""


@credential.command("add")
@click.argument("principal")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="What PRINCIPAL may do: admin (everything), tenant (its own workloads), agent (a node agent: "
                   "interruption notices).")
@click.option("--file", "file", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the new credential (mode 0600); hand it to whoever acts as PRINCIPAL.")
@name_option
@address_option
@json_option
def credential_add(principal: str, role: str, file: Path, name: str, address: str | None, as_json: bool) -> None:
    """Give PRINCIPAL (a tenant's name, an agent's, an admin's) a credential; only an admin may."""
    if file.exists():
        raise click.UsageError(f"{file} exists; a credential is never overwritten (remove it first)")
    written = scheduler_client(name, address).add_principal(principal, role, file)
    if emit(as_json, {"principal": principal, "role": role, "file": str(written)}):
        return
    click.echo(f"{principal} ({role}): credential written to {written}; use it with "
               f"ELASTICML_CREDENTIAL_PATH={written}")


@credential.command("remove")
@click.argument("principal")
@name_option
@address_option
@json_option
def credential_remove(principal: str, name: str, address: str | None, as_json: bool) -> None:
    """Revoke PRINCIPAL's credential at once."""
    scheduler_client(name, address).remove_principal(principal)
    if emit(as_json, {"principal": principal, "removed": True}):
        return
    click.echo(f"{principal}: removed")


@credential.command("list")
@name_option
@address_option
@json_option
def credential_list(name: str, address: str | None, as_json: bool) -> None:
    """The principals and their roles (never their credentials)."""
    principals = scheduler_client(name, address).principals()
    if emit(as_json, principals):
        return
    click.echo(f"{'PRINCIPAL':<24} ROLE")
    for p in principals:
        click.echo(f"{p['name']:<24} {p['role']}")
