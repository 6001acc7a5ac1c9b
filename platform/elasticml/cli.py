"""The `elasticml` command: a thin layer over the Python API.

Every error elasticml raises on purpose (`ElasticMLError`) is printed as one
line, `elasticml: error: ...`, with exit status 2, like click's own usage errors.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click

from elasticml import labels as L
from elasticml.errors import ElasticMLError
from elasticml.scheduler.identity import ROLES


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ElasticMLError as exc:
            click.echo(f"elasticml: error: {str(exc).splitlines()[0]}", err=True)
            rest = str(exc).splitlines()[1:]
            if rest:
                click.echo("\n".join(rest), err=True)
            ctx.exit(2)


def _use_endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    import os

    if value:
        os.environ["ELASTICML_ENDPOINT"] = value


@click.group(cls=_Group)
@click.version_option(package_name="elasticml")
@click.option("--endpoint", expose_value=False, callback=_use_endpoint, is_eager=True,
              help="Reach the scheduler through this API server with your credential, not through Ray "
                   "[default: $ELASTICML_ENDPOINT, then `elasticml login`'s].")
def main() -> None:
    """elasticml: elastic, cost-aware ML on Ray."""


# -- cluster -------------------------------------------------------------------
@main.group(cls=_Group)
def cluster() -> None:
    """Run a local elastic Ray cluster from a cluster YAML."""


_name_option = click.option("--name", default="local", show_default=True, help="Cluster name (one state folder each).")

_json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")


def _emit(as_json: bool, payload: object) -> bool:
    """Print `payload` as JSON when asked; True when it did (the caller then prints nothing else)."""
    if as_json:
        click.echo(json.dumps(payload, default=str))
    return as_json


@cluster.command("up")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cluster YAML [default: cluster_configs/local.yaml].")
@_name_option
@click.option("--port", type=int, default=6379, show_default=True, help="GCS port.")
@click.option("--dashboard-port", type=int, default=8265, show_default=True, help="Dashboard / job API port.")
@click.option("--spot-trace", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Replay this spot availability trace on the spot node types (0 = available).")
@click.option("--start-hour", type=float, default=0.0, show_default=True, help="Trace hour the replay starts at.")
@click.option("--seconds-per-hour", type=float, default=20.0, show_default=True, help="Wall seconds per trace hour.")
@click.option("--price-ratio", type=float, default=3.0, show_default=True, help="On-demand / spot price.")
@click.option("--notice-seconds", type=float, default=8.0, show_default=True,
              help="Seconds between an outage's interruption notice and the reclaim of spot nodes.")
@_json_option
def cluster_up(config_path: Path | None, name: str, port: int, dashboard_port: int, spot_trace: Path | None,
               start_hour: float, seconds_per_hour: float, price_ratio: float, notice_seconds: float,
               as_json: bool) -> None:
    """Start the head; worker nodes come and go with demand for their labels."""
    from elasticml.cluster import LocalCluster, load_cluster_spec
    from elasticml.cluster.spot_market import MarketSettings
    from elasticml.repo import default_cluster_config

    spec = load_cluster_spec(config_path or default_cluster_config())
    market = None
    if spot_trace is not None:
        from elasticml.scheduler.traces import load_trace

        load_trace(spot_trace)  # a bad trace is refused before anything starts
        market = MarketSettings(trace=str(spot_trace.resolve()), start_hour=start_hour,
                                seconds_per_hour=seconds_per_hour, price_ratio=price_ratio, notice_seconds=notice_seconds)
    t0 = time.monotonic()
    info = LocalCluster(name).up(spec, port=port, dashboard_port=dashboard_port, market=market)
    if _emit(as_json, {"cluster": name, "up_s": round(time.monotonic() - t0, 1), "gcs_address": info.gcs_address,
                       "dashboard_url": info.dashboard_url, "token_path": str(info.token_path), "pid": info.pid,
                       "node_types": {t.name: {"market": t.market, "min_workers": t.min_workers,
                                               "max_workers": t.max_workers} for t in spec.worker_types.values()}}):
        return
    click.echo(f"cluster {name!r} is up in {time.monotonic() - t0:.1f}s (supervisor PID {info.pid})")
    click.echo(f"  GCS        {info.gcs_address}")
    click.echo(f"  dashboard  {info.dashboard_url}")
    click.echo(f"  token      {info.token_path}")
    click.echo("  worker node types (min..max):")
    for t in spec.worker_types.values():
        click.echo(f"    {t.name:<16} {t.market or '?':<10} {t.resources}  {t.min_workers}..{t.max_workers}")
    click.echo(f'Point clients at it: eval "$(elasticml cluster env --name {name})"')


@cluster.command("down")
@_name_option
@_json_option
def cluster_down(name: str, as_json: bool) -> None:
    """Stop every process `cluster up` started, by PID."""
    from elasticml.cluster import LocalCluster

    pids = LocalCluster(name).down()
    if _emit(as_json, {"cluster": name, "stopped": len(pids)}):
        return
    click.echo(f"cluster {name!r} is down ({len(pids)} processes stopped)")


@cluster.command("status")
@_name_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cluster_status(name: str, as_json: bool) -> None:
    """Nodes, their labels and markets."""
    from elasticml.cluster import LocalCluster

    lc = LocalCluster(name)
    info = lc.require_info()
    nodes = lc.nodes()
    rows = [
        {
            "node_id": n["node_id"],
            "node_type": n.get("labels", {}).get(L.NODE_TYPE, "head" if n.get("is_head_node") else "?"),
            "market": L.market_of(n.get("labels", {})) or ("-" if n.get("is_head_node") else "?"),
            "cpus": n.get("resources_total", {}).get("CPU", 0),
            "labels": {k: v for k, v in n.get("labels", {}).items() if k != "ray.io/node-id"},
        }
        for n in nodes
    ]
    if as_json:
        click.echo(json.dumps({"name": name, "gcs_address": info.gcs_address, "api_url": info.api_url or None,
                               "nodes": rows}, indent=2))
        return
    click.echo(f"cluster {name!r}: {len(rows)} alive node(s), dashboard {info.dashboard_url}"
               + (f", API server {info.api_url}" if info.api_url else ""))
    click.echo(f"  {'NODE':<8}  {'NODE TYPE':<16} {'MARKET':<10} {'CPUS':<5} LABELS")
    for r in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
        click.echo(f"  {r['node_id'][-8:]:<8}  {r['node_type']:<16} {r['market']:<10} {r['cpus']:<5} {labels}")


@cluster.command("render")
@click.option("--target", type=click.Choice(["local", "aws", "kuberay", "all"]), default="all", show_default=True)
@click.option("--cluster", "cluster_def", default=None, help="A definition in elasticml.provision.definition.")
@click.option("--check", is_flag=True, help="Exit 1 if the committed files differ from what renders.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Repository root.")
@click.option("--image", default=None, help="REPOSITORY:TAG of the platform's image (built from the Dockerfile; "
              "-cpu/-gpu appended) for the KubeRay manifests [default: the definition's].")
@click.option("--tenant", default=None, help="Instead, TENANT's own RayCluster (KubeRay) in namespace "
              "elasticml-tenant-TENANT, on --cluster's node pools, calling its API server with the tenant's credential.")
@click.option("--values", "values_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Your site's values (account, admin CIDR, bucket, image, certificate, subnets, tenants) "
                   "[default: cluster_configs/values.example.yaml, what the committed files use].")
@_json_option
def cluster_render(target: str, cluster_def: str | None, check: bool, out: Path | None, image: str | None,
                   tenant: str | None, values_file: Path | None, as_json: bool) -> None:
    """Write (or --check) the local, AWS and KubeRay files generated from the one definition at your site."""
    from elasticml.errors import ConfigError
    from elasticml.provision.render import render, render_all
    from elasticml.provision.values import load_values
    from elasticml.repo import ROOT

    values = load_values(values_file)

    if tenant is not None:
        from elasticml.provision.tenant import render_tenant

        if target not in ("kuberay", "all"):
            raise ConfigError("a tenant's cluster is rendered for KubeRay only", field="target")
        files = render_tenant(cluster_def or "aws-cpu", tenant, image=image, values=values)
    elif target == "all" and image is None:
        files = render_all(values)
    elif target == "all":
        from elasticml.provision.definition import CLUSTERS

        files = {k: v for c in CLUSTERS if c != "local"
                 for k, v in render("kuberay", c, image=image, values=values).items()}
    else:
        files = render(target, cluster_def or ("local" if target == "local" else "aws-cpu"), image=image,
                       values=values)
    root = out or ROOT
    stale = []
    for rel, text in files.items():
        path = root / rel
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not as_json:
            click.echo(f"wrote {rel}")
    if as_json:
        click.echo(json.dumps({"files": sorted(files), "stale": stale} if check else {"wrote": sorted(files)}))
        if stale:
            sys.exit(1)
        return
    if check:
        if stale:
            click.echo("out of date (run `elasticml cluster render`): " + ", ".join(stale), err=True)
            sys.exit(1)
        click.echo(f"{len(files)} generated files are up to date")


@cluster.command("credentials")
@click.argument("cluster_name")
@_json_option
def cluster_credentials(cluster_name: str, as_json: bool) -> None:
    """Make (once) a cloud cluster's node-agent credential, Ray TLS CA and checkpoint key, before `ray up`.

    CLUSTER_NAME is the launcher's `cluster_name` (e.g. elasticml-aws-cpu). The rendered YAML
    mounts all three on every node, the CA's key on the head only: the scheduler trusts the
    credential as an agent when it starts, the head certifies itself with the CA and each worker
    has the head's API server certify it (elasticml.provision.tls), and every node signs and
    checks checkpoints with the key ($ELASTICML_CHECKPOINT_KEY_PATH).
    """
    from elasticml.checkpoint_key import make_cluster_key
    from elasticml.provision.tls import make_ca
    from elasticml.scheduler.identity import agent_credential, credentials_dir
    from elasticml.scheduler.spec import NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, cluster_name) or len(cluster_name) > 63:
        raise click.BadParameter("must be a cluster name (letters, digits, - and _)", param_hint="CLUSTER_NAME")
    agent_credential(cluster_name)
    folder = credentials_dir(cluster_name)
    make_ca(folder / "tls", cluster_name)
    key = make_cluster_key(cluster_name)
    if _emit(as_json, {"agent_credential": str(folder / "agent"), "ca_certificate": str(folder / "tls" / "ca.crt"),
                       "checkpoint_key": str(key)}):
        return
    click.echo(f"node agents' credential: {folder / 'agent'} (mode 0600)")
    click.echo(f"Ray TLS CA: {folder / 'tls' / 'ca.crt'} (its key, mode 0600, beside it)")
    click.echo(f"checkpoint key: {key} (mode 0600)")


@cluster.command("prometheus-config")
@_name_option
@click.option("--rules", "rule_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A rules file for Prometheus to load (cluster_configs/prometheus/elasticml-rules.yaml); repeatable.")
def cluster_prometheus_config(name: str, rule_files: tuple[Path, ...]) -> None:
    """Print a Prometheus config that scrapes every node of the local cluster (Ray's service discovery),
    labelling its series ray_io_cluster=NAME as the dashboards expect."""
    from elasticml import home
    from elasticml.cluster import LocalCluster
    from elasticml.observe.dashboards import prometheus_config

    LocalCluster(name).require_info()
    click.echo(prometheus_config(str((home.ray_temp_dir(name) / "session_latest").resolve()), cluster=name,
                                 rule_files=tuple(str(p.resolve()) for p in rule_files)), nl=False)


@cluster.command("env")
@_name_option
def cluster_env(name: str) -> None:
    """Print the exports that let `ray job submit` and Ray clients reach the cluster."""
    from elasticml.cluster import LocalCluster

    for key, value in LocalCluster(name).require_info().client_env().items():
        click.echo(f"export {key}={value}")


# -- scheduler -----------------------------------------------------------------
@main.group(cls=_Group)
def scheduler() -> None:
    """Place workloads on spot, on-demand or reserved capacity, and explain why."""


_address_option = click.option(
    "--address", default=None,
    help="GCS address (host:port) of a `ray up` or KubeRay cluster [default: $RAY_ADDRESS when it is one, "
         "else the local cluster --name].")


def _connect(name: str, address: str | None) -> None:
    """A Ray driver connection to the cluster: --address, then $RAY_ADDRESS (a GCS address), else the local cluster."""
    import os

    import ray

    from elasticml.cluster import LocalCluster

    env = os.environ.get("RAY_ADDRESS", "")
    address = address or (env if env and "://" not in env else None)  # http:// is the job API, not the GCS
    if address:
        if not ray.is_initialized():
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        return
    LocalCluster(name).require_info().connect()


def _scheduler(name: str, address: str | None = None):  # type: ignore[no-untyped-def]
    from elasticml.api.cli import configured_client
    from elasticml.scheduler.client import SchedulerClient

    over_http = configured_client()  # a tenant's way in: its credential to the API server, no Ray token
    if over_http is not None:
        return over_http
    _connect(name, address)
    return SchedulerClient.connect()


def _echo_records(records: list[dict]) -> None:  # type: ignore[type-arg]
    for d in records:
        allocs = d.get("allocations", [])
        where = ", ".join(f"{a['workers']}x {a['node_type']} ({a['market']})" for a in allocs)
        cost = f" ${d['hourly_cost']:.4f}/h" if allocs else ""
        click.echo(f"{d['workload']}: {d['action']}{' -> ' + where if where else ''}{cost}" if "workload" in d
                   else f"{d.get('event', d.get('action'))}")
        click.echo(f"  why: {d.get('reason', d.get('why', ''))}")
        if d.get("ray_options"):
            click.echo(f"  ray options: {json.dumps(d['ray_options'])}")


def _echo_placement(p) -> None:  # type: ignore[no-untyped-def]
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
@click.option("--tick-seconds", type=float, default=None, help="Controller period [default 10].")
@click.option("--seconds-per-hour", type=float, default=None, help="Wall seconds per scheduler hour [default 3600].")
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
@_name_option
@_address_option
@_json_option
def scheduler_start(config_path: Path | None, ledger_path: Path | None, tick_seconds: float | None,
                    seconds_per_hour: float | None, spot_market: Path | None, live_prices_s: float | None,
                    api_host: str, api_port: int, api_cert: Path | None, api_key: Path | None,
                    node_ca_dir: Path | None, name: str,
                    address: str | None, as_json: bool) -> None:
    """Create the cluster's scheduler (once per cluster; `cluster up` does it for local clusters)."""
    from dataclasses import replace

    from elasticml.cluster import load_cluster_spec
    from elasticml.scheduler.settings import ControllerConfig
    from elasticml.scheduler.client import SchedulerClient, running_cluster_config

    spec = load_cluster_spec(running_cluster_config(config_path))  # refuse a bad config before touching the cluster
    controller = ControllerConfig.from_env()
    overrides = {k: v for k, v in (("tick_seconds", tick_seconds), ("seconds_per_hour", seconds_per_hour),
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
    _connect(name, address)
    st = SchedulerClient.start(spec, ledger_path=ledger_path, controller=controller).status()
    if spot_market is not None and SpotMarket.load(spot_market).settings.notices:
        from elasticml.cluster.market_driver import start_driver

        start_driver(spot_market.resolve(), [p["node_type"] for p in st["pools"] if p["market"] == "spot"])
    from elasticml.api.actor import start_api_server

    import os

    if api_host not in ("127.0.0.1", "localhost"):  # the node's certificate from the cluster's CA, by default
        api_cert = api_cert or (Path(os.environ["RAY_TLS_SERVER_CERT"]) if os.environ.get("RAY_TLS_SERVER_CERT") else None)
        api_key = api_key or (Path(os.environ["RAY_TLS_SERVER_KEY"]) if os.environ.get("RAY_TLS_SERVER_KEY") else None)
    # Tenants' way in, with their own credential.
    url = start_api_server(host=api_host, port=api_port, tls_cert=str(api_cert) if api_cert else None,
                           tls_key=str(api_key) if api_key else None,
                           node_ca=str(node_ca_dir.resolve()) if node_ca_dir else None)
    if _emit(as_json, {"cluster": st["cluster"], "config": st["config"], "api_url": url,
                       "pools": [{"node_type": p["node_type"], "market": p["market"]} for p in st["pools"]]}):
        return
    click.echo(f"scheduler of cluster {st['cluster']!r} ({st['config']}): pools "
               + ", ".join(f"{p['node_type']} ({p['market']})" for p in st["pools"]))
    click.echo(f"API server: {url} (tenants: `elasticml login --endpoint {url} --credential FILE`)")


@scheduler.command("submit")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@_name_option
@_address_option
@_json_option
def scheduler_submit(spec_file: Path, name: str, address: str | None, as_json: bool) -> None:
    """Place the workload described in SPEC_FILE (YAML)."""
    from elasticml.scheduler.spec import WorkloadSpec

    raw = _read_yaml(spec_file)
    spec = WorkloadSpec.from_dict(raw, source=str(spec_file))  # refuse bad specs before touching the cluster
    placement = _scheduler(name, address).place(spec)
    if not _emit(as_json, placement.to_dict()):
        _echo_placement(placement)


@scheduler.command("validate")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
def scheduler_validate(spec_file: Path, as_json: bool) -> None:
    """Check SPEC_FILE offline, as the scheduler's door would (no cluster): exit 0 when valid, 2 naming the field."""
    from elasticml.scheduler.spec import WorkloadSpec

    spec = WorkloadSpec.from_dict(_read_yaml(spec_file), source=str(spec_file))
    if _emit(as_json, {"file": str(spec_file), "valid": True, "spec": spec.to_dict()}):
        return
    click.echo(f"{spec_file}: valid ({spec.kind} {spec.name} of tenant {spec.tenant}, {spec.priority} priority, "
               f"{spec.min_workers}-{spec.max_workers} workers)")


def _read_yaml(path: Path):  # type: ignore[no-untyped-def]
    from elasticml.yamlio import load_yaml

    return load_yaml(path, source=str(path))


@scheduler.command("status")
@_name_option
@_address_option
@click.option("--json", "as_json", is_flag=True)
def scheduler_status(name: str, address: str | None, as_json: bool) -> None:
    """Pools, what runs where, what the controller steers, and the queue."""
    st = _scheduler(name, address).status()
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
@_name_option
@_address_option
@_json_option
def scheduler_explain(workload: str, name: str, address: str | None, as_json: bool) -> None:
    """Every decision taken for WORKLOAD, with its reason (`_events` for node losses)."""
    records = _scheduler(name, address).explain(workload)
    if _emit(as_json, {"workload": workload, "records": records}):
        return
    if not records:
        click.echo(f"no decisions recorded for {workload!r}")
    _echo_records(records)


@scheduler.command("finish")
@click.argument("workload")
@_name_option
@_address_option
@_json_option
def scheduler_finish(workload: str, name: str, address: str | None, as_json: bool) -> None:
    """Mark WORKLOAD done: its capacity goes to the queue and to cheaper moves."""
    _scheduler(name, address).finish(workload)
    if _emit(as_json, {"workload": workload, "finished": True}):
        return
    click.echo(f"{workload}: finished")


@scheduler.command("interrupt")
@click.argument("node_type")
@_name_option
@_address_option
@_json_option
def scheduler_interrupt(node_type: str, name: str, address: str | None, as_json: bool) -> None:
    """Report a spot interruption notice for NODE_TYPE; its work is re-placed."""
    result = _scheduler(name, address).interrupt(node_type)
    if _emit(as_json, {"node_type": node_type, **result}):
        return
    _echo_records(result["decisions"])
    click.echo(f"drained {len(result['drained_nodes'])} node(s) of {node_type} as preempted")


@scheduler.command("whoami")
@_name_option
@_address_option
@_json_option
def scheduler_whoami(name: str, address: str | None, as_json: bool) -> None:
    """The principal and role your credential ($ELASTICML_CREDENTIAL_PATH, else the cluster's admin file) is."""
    me = _scheduler(name, address).whoami()
    if _emit(as_json, me):
        return
    click.echo(f"{me['name']} ({me['role']})")


@scheduler.group("credential", cls=_Group)
def credential() -> None:
    """Who may call the scheduler: admins, tenants and node agents, each with its own credential file."""


@credential.command("add")
@click.argument("principal")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--file", "file", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the new credential (mode 0600); hand it to whoever acts as PRINCIPAL.")
@_name_option
@_address_option
@_json_option
def credential_add(principal: str, role: str, file: Path, name: str, address: str | None, as_json: bool) -> None:
    """Give PRINCIPAL (a tenant's name, an agent's, an admin's) a credential; only an admin may."""
    if file.exists():
        raise click.UsageError(f"{file} exists; a credential is never overwritten (remove it first)")
    written = _scheduler(name, address).add_principal(principal, role, file)
    if _emit(as_json, {"principal": principal, "role": role, "file": str(written)}):
        return
    click.echo(f"{principal} ({role}): credential written to {written}; use it with "
               f"ELASTICML_CREDENTIAL_PATH={written}")


@credential.command("remove")
@click.argument("principal")
@_name_option
@_address_option
@_json_option
def credential_remove(principal: str, name: str, address: str | None, as_json: bool) -> None:
    """Revoke PRINCIPAL's credential at once."""
    _scheduler(name, address).remove_principal(principal)
    if _emit(as_json, {"principal": principal, "removed": True}):
        return
    click.echo(f"{principal}: removed")


@credential.command("list")
@_name_option
@_address_option
@_json_option
def credential_list(name: str, address: str | None, as_json: bool) -> None:
    """The principals and their roles (never their credentials)."""
    principals = _scheduler(name, address).principals()
    if _emit(as_json, principals):
        return
    click.echo(f"{'PRINCIPAL':<24} ROLE")
    for p in principals:
        click.echo(f"{p['name']:<24} {p['role']}")


# -- checkpoint ------------------------------------------------------------------
@main.group(cls=_Group)
def checkpoint() -> None:
    """Checkpoints: verify, copy (to or from S3), or sign one written before checkpoints were signed."""


@checkpoint.command("verify")
@click.argument("path")
@_json_option
def checkpoint_verify(path: str, as_json: bool) -> None:
    """Exit 0 if PATH is complete, signed with this cluster's key ($ELASTICML_CHECKPOINT_KEY_PATH) and
    every file matches its digest."""
    from elasticml.train.checkpoint import verify_files

    meta = verify_files(path)
    if _emit(as_json, {"path": path, "step": meta["step"], "files": len(meta["files"]), "intact": True}):
        return
    click.echo(f"{path}: step {meta['step']}, {len(meta['files'])} files, signed and intact")


@checkpoint.command("sign")
@click.argument("path")
@_json_option
def checkpoint_sign(path: str, as_json: bool) -> None:
    """Sign PATH with this cluster's checkpoint key, vouching for its bytes as they are now.

    For checkpoints written before checkpoints were signed (or under another cluster's key): Serve
    and `latest:` refuse them until then. Run it where the key is ($ELASTICML_CHECKPOINT_KEY_PATH: the
    head, or the launching machine), only on checkpoints you trust: a signed checkpoint's weights
    are loaded and served (its files run no code either way: elasticml.train.safe_load).
    """
    from elasticml.train.checkpoint import sign_checkpoint

    meta = sign_checkpoint(path)
    if _emit(as_json, {"path": path, "step": meta["step"], "files": len(meta["files"]), "signed": True}):
        return
    click.echo(f"{path}: step {meta['step']}, {len(meta['files'])} files signed")


@checkpoint.command("copy")
@click.argument("src")
@click.argument("dst")
@_json_option
def checkpoint_copy(src: str, dst: str, as_json: bool) -> None:
    """Copy the checkpoint SRC to DST, a new folder or s3:// prefix (upload, download or between buckets).

    SRC must be complete and signed with this cluster's key. DST becomes a checkpoint only once every
    file is in and matches SRC's manifest; a copy that fails leaves none there.
    """
    from elasticml.train.checkpoint import copy_checkpoint

    t0 = time.monotonic()
    meta = copy_checkpoint(src, dst)
    size = sum(meta["files"].values())
    if _emit(as_json, {"src": src, "dst": dst, "step": meta["step"], "files": len(meta["files"]), "bytes": size,
                       "seconds": round(time.monotonic() - t0, 2)}):
        return
    click.echo(f"{dst}: step {meta['step']}, {len(meta['files'])} files, {size / 1e6:.1f} MB copied from {src} "
               f"in {time.monotonic() - t0:.1f}s")


# -- optimize --------------------------------------------------------------------
def _shares(value: str, option: str) -> tuple[float, ...]:
    from elasticml.errors import ConfigError

    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"must be comma-separated numbers, got {value[:80]!r}", field=option) from None


@main.command("optimize")
@click.argument("checkpoint")
@click.option("--eval-data", required=True, help="Held-out corpus (elasticml data build) the teacher did not train on.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for candidates and report.json.")
@click.option("--train-data", default=None, help="Training corpus: calibrates pruning, fine-tunes the pruned students.")
@click.option("--keep", "keep", default="0.5", show_default=True, help="Shares of MLP channels pruned candidates keep.")
@click.option("--layers", "layers", default="", help="Shares of blocks shallower candidates keep (e.g. 0.5).")
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for the speed measurement.")
@click.option("--quality-budget", type=float, default=0.01, show_default=True,
              help="Held-out loss may exceed the teacher's by this share.")
@click.option("--distill-steps", type=int, default=100, show_default=True, help="Fine-tune steps per pruned student.")
@click.option("--eval-blocks", type=int, default=64, show_default=True, help="Held-out blocks the loss is taken on.")
@click.option("--precisions", default="int8,onnx,onnx-int8", show_default=True,
              help="Serving precisions measured besides fp32: int8 (torch), onnx, onnx-int8 (ONNX Runtime).")
@_json_option
def optimize_cmd(checkpoint: str, eval_data: str, out: str, train_data: str | None, keep: str, layers: str, threads: int,
                 quality_budget: float, distill_steps: int, eval_blocks: int, precisions: str, as_json: bool) -> None:
    """Smaller and faster candidates from CHECKPOINT (int8 and ONNX Runtime; students with fewer MLP
    channels or blocks, distilled from it, in fp32 and those precisions), measured on held-out data
    and this machine's CPU, gated on quality and gain.

    OUT/report.json keeps every number, each verdict and the chosen candidate.
    """
    from elasticml.optimize.distill import DistillConfig
    from elasticml.optimize.gate import GateConfig
    from elasticml.optimize.pipeline import OptimizeConfig, optimize, table

    cfg = OptimizeConfig(checkpoint=checkpoint, eval_data=eval_data, out=out, train_data=train_data,
                         keeps=_shares(keep, "--keep"), layer_keeps=_shares(layers, "--layers"), threads=threads,
                         eval_blocks=eval_blocks, precisions=tuple(p.strip() for p in precisions.split(",") if p.strip()),
                         gate=GateConfig(quality_budget=quality_budget), distill=DistillConfig(steps=distill_steps))
    report = optimize(cfg, say=(lambda _m: None) if as_json else (lambda m: click.echo(m, err=True)))
    if _emit(as_json, report):
        return
    click.echo(table(report))
    click.echo(f"chosen: {report['chosen'] or 'none passed the gate'} ({Path(out) / 'report.json'})")


# -- release ---------------------------------------------------------------------
@main.command("release")
@click.argument("candidate")
@click.option("--app", default="completion", show_default=True, help="The Serve application to release into.")
@click.option("--pick", "pick", default=None, help="A candidate of the report by name [default: the one it chose].")
@click.option("--precision", default=None,
              help="When CANDIDATE is a checkpoint: the precision it serves in [default: the current version's].")
@click.option("--base", "base_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The current version, for the app's first release: its `serve deploy` file or a YAML of its args.")
@click.option("--holdout-file", required=True, help="Held-out text (local or s3://) the canary scores both versions on.")
@click.option("--share", "canary_share", type=float, default=0.1, show_default=True,
              help="Share of the traffic the candidate takes.")
@click.option("--evaluate-after", type=int, default=50, show_default=True, help="Canary requests before it is judged.")
@click.option("--max-nll-increase", type=float, default=0.01, show_default=True,
              help="Roll back when the candidate's held-out loss is more than this share above the current one's.")
@click.option("--max-latency-ratio", type=float, default=1.5, show_default=True,
              help="Roll back when its p50 latency per token is more than this many times the current one's.")
@click.option("--min-latency-samples", type=int, default=20, show_default=True,
              help="Requests on each version before latency counts.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="Seconds to wait for a verdict; then it is judged on what it saw, and rolled back without one.")
@_name_option
@_address_option
@_json_option
def release_cmd(candidate: str, app: str, pick: str | None, precision: str | None, base_file: str | None,
                holdout_file: str, canary_share: float, evaluate_after: int, max_nll_increase: float,
                max_latency_ratio: float, min_latency_samples: int, timeout_s: float, name: str, address: str | None,
                as_json: bool) -> None:
    """Release CANDIDATE (an `elasticml optimize` report or its folder, or a checkpoint) into Serve app APP
    through a canary: promoted when the router's online checks pass, rolled back otherwise.

    The record, $ELASTICML_HOME/releases/APP.json, keeps every step and what APP serves now (the next
    release's base); releases/APP.yaml is a `serve deploy` file of it.
    """
    from elasticml.serve.release import (
        Candidate,
        ReleaseConfig,
        candidate_from_report,
        load_record,
        read_base,
        record_path,
        release,
    )

    path = Path(candidate).expanduser()
    is_report = path.suffix == ".json" or (path.is_dir() and (path / "report.json").exists())
    base, route = read_base(base_file, app) if base_file else (None, None)
    if is_report:
        if precision is not None:
            raise click.UsageError("--precision is for a checkpoint; a report's candidate has its own")
        chosen = candidate_from_report(path, pick)
    else:
        if pick is not None:
            raise click.UsageError("--pick is for a report")
        current = base or (load_record(record_path(app)) or {}).get("serving", {})
        chosen = Candidate(checkpoint=candidate, precision=precision or current.get("precision", "auto"))
    cfg = ReleaseConfig(candidate=chosen, app=app, route_prefix=route, base=base, holdout_file=holdout_file,
                        canary_share=canary_share, evaluate_after=evaluate_after, max_nll_increase=max_nll_increase,
                        max_latency_ratio=max_latency_ratio, min_latency_samples=min_latency_samples,
                        timeout_s=timeout_s)
    _connect(name, address)
    entry = release(cfg, say=(lambda _m: None) if as_json else (lambda m: click.echo(m, err=True)))
    if _emit(as_json, entry):
        return
    click.echo(f"{app}: {entry['outcome'].replace('_', ' ')} ({record_path(app)})")


# -- audit -----------------------------------------------------------------------
@main.group(cls=_Group)
def audit() -> None:
    """The scheduler's audit trail: who did what, when and why; tamper-evident."""


def _audit_files(name: str, ledger: Path | None) -> tuple[Path, Path, Path]:
    from elasticml.home import home
    from elasticml.scheduler.audit import audit_key_path

    folder = ledger.parent if ledger else home() / "scheduler" / name
    return folder / "audit.jsonl", audit_key_path(name), ledger or folder / "ledger.sqlite"


_ledger_option = click.option("--ledger", type=click.Path(path_type=Path, dir_okay=False), default=None,
                              help="The scheduler's ledger (the trail lies beside it) [default: "
                                   "$ELASTICML_HOME/scheduler/NAME/ledger.sqlite]; read on the head, offline. The "
                                   "key is apart: $ELASTICML_AUDIT_KEY_PATH, else $ELASTICML_HOME/credentials/NAME/audit.key.")


@audit.command("show")
@_name_option
@_ledger_option
@click.option("--tenant", default=None, help="Only records about this tenant's workloads or by it.")
@click.option("--since", type=float, default=None, help="Only records at or after this Unix time.")
@click.option("--json", "as_json", is_flag=True)
def audit_show(name: str, ledger: Path | None, tenant: str | None, since: float | None, as_json: bool) -> None:
    """The audit trail, oldest first."""
    trail, _, _ = _audit_files(name, ledger)
    from elasticml.scheduler.audit import escape_controls, read_records

    for r in read_records(trail):
        if tenant is not None and r.get("tenant") != tenant and r.get("who") != f"tenant {tenant}":
            continue
        if since is not None and r.get("at", 0) < since:
            continue
        if as_json:
            click.echo(json.dumps(r, sort_keys=True))
            continue
        at = r.get("at", 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at if type(at) in (int, float) else 0))
        # Every field a caller wrote is shown with its control characters escaped: a newline in a
        # reason must not print a forged record below it.
        e = {k: escape_controls(str(r.get(k))) for k in ("seq", "who", "action", "target", "outcome", "why")}
        target = f" {e['target']}" if r.get("target") else ""
        click.echo(f"{e['seq']:>6} {when} {e['who']}: {e['action']}{target} [{e['outcome']}]"
                   + (f" - {e['why']}" if r.get("why") else ""))


@audit.command("verify")
@_name_option
@_ledger_option
@_json_option
def audit_verify(name: str, ledger: Path | None, as_json: bool) -> None:
    """Exit 0 when the trail is intact; 1, naming the first bad record, when it was edited, cut or reordered."""
    from elasticml.scheduler.audit import AuditLog, load_key, store_tip

    trail, key_file, ledger_file = _audit_files(name, ledger)
    if not key_file.exists():
        raise click.ClickException(f"no audit key at {key_file}: run this on the scheduler's head, or set "
                                   "ELASTICML_AUDIT_KEY_PATH to where the key is kept")
    tip, last = store_tip(ledger_file)
    verdict = AuditLog.verify(trail, load_key(key_file), tip, last_decision_at=last)
    if as_json:
        click.echo(json.dumps({"intact": verdict.ok, "records": verdict.records, "problem": verdict.problem,
                               "after_tip": verdict.after_tip}))
        sys.exit(0 if verdict.ok else 1)
    if verdict.ok:
        extra = (f"; {verdict.after_tip} record(s) after it, of a command that did not commit (a crash) or "
                 "one under way") if verdict.after_tip else ""
        click.echo(f"intact: {verdict.records} records, chained and signed, reaching the store's signed tip{extra}")
        return
    click.echo(f"NOT intact after {verdict.records} good records: {verdict.problem}", err=True)
    sys.exit(1)


@main.group(cls=_Group)
def cost() -> None:
    """What the cluster's workloads cost."""


@cost.command("report")
@_name_option
@_address_option
@click.option("--ledger", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Read this ledger file instead of asking the running scheduler (e.g. after the cluster "
                   "is down); open intervals are charged to the last time it recorded.")
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a page of charts: cost over time by market and tenant, worker-hours, savings, moves.")
@click.option("--png", "png_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the same charts as one PNG.")
@click.option("--json", "as_json", is_flag=True)
def cost_report(name: str, address: str | None, ledger: Path | None, html_out: Path | None, png_out: Path | None,
                as_json: bool) -> None:
    """Cost per tenant, workload and market, and savings against all on-demand."""
    if ledger is not None:
        from elasticml.scheduler.ledger import Ledger

        book = Ledger.read_only(ledger)
        now = book.last_recorded() or time.time()
        report = book.report(now=now)
        intervals = book.intervals() if (html_out or png_out) else []
    else:
        sched = _scheduler(name, address)
        report, now = sched.cost_report(), time.time()
        intervals = [iv for w in report["workload"] for iv in sched.intervals(w["key"])] if (html_out or png_out) else []
    if html_out or png_out:
        from elasticml.atomic import write_atomic
        from elasticml.observe.reports import cost_charts, page, png

        t = report["total"]
        summary = [("total", f"${t['cost']:.6f}"), ("all on-demand", f"${t['on_demand_cost']:.6f}"),
                   ("saved", f"{t['savings_pct']:.1f}%"), ("allocation intervals", str(len(intervals)))]
        if html_out:
            write_atomic(html_out, page("elasticml cost report", summary, cost_charts(intervals, report, now)))
        if png_out:
            write_atomic(png_out, png(cost_charts(intervals, report, now)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for column in ("tenant", "workload", "market"):
        if column not in report:  # a tenant sees its own rows only, and no market totals
            continue
        click.echo(f"by {column}:")
        for r in report[column]:
            click.echo(f"  {r['key']:<20} ${r['cost']:.6f}  (on-demand ${r['on_demand_cost']:.6f}, "
                       f"saved ${r['savings']:.6f})  {r['worker_hours']:.4f} worker-h")
    t = report["total"]
    click.echo(f"total ${t['cost']:.6f}; all on-demand would be ${t['on_demand_cost']:.6f}: "
               f"saved {t['savings_pct']:.1f}%" + (f" over {report['intervals']} allocation intervals"
                                                    if "intervals" in report else ""))


# -- train -----------------------------------------------------------------------
@main.group(cls=_Group)
def train() -> None:
    """Training runs: their reports."""


@train.command("report")
@click.argument("run_dir")
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a page of charts: loss and tokens/s per step, resumes marked.")
@click.option("--png", "png_out", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True)
def train_report(run_dir: str, html_out: Path | None, png_out: Path | None, as_json: bool) -> None:
    """What a run (RUN_DIR: the storage path / run name, local or s3://) reported at every report point."""
    from elasticml.train.history import read_history

    history = read_history(run_dir)
    if not history:
        raise click.ClickException(f"{run_dir} has no training history (history/ is written by jobs/train.py runs)")
    run = run_dir.rstrip("/").rsplit("/", 1)[-1]
    resumes = [r["resumed_from"] for r in history if r.get("resumed_from")]
    if html_out or png_out:
        from elasticml.atomic import write_atomic
        from elasticml.observe.reports import page, png, train_charts

        summary = [("run", run), ("steps reported", f"{history[0]['step']}..{history[-1]['step']}"),
                   ("last loss", f"{history[-1].get('loss', float('nan')):.4f}"),
                   ("resumed from", ", ".join(map(str, resumes)) or "never")]
        if html_out:
            write_atomic(html_out, page(f"elasticml training report: {run}", summary, train_charts(history, run)))
        if png_out:
            write_atomic(png_out, png(train_charts(history, run)))
    if as_json:
        click.echo(json.dumps({"run": run, "history": history, "resumed_from": resumes}))
        return
    click.echo(f"{'step':>8}  {'loss':>8}  {'tokens/s':>10}  {'workers':>7}")
    for r in history:
        mark = "  (resumed)" if r.get("resumed_from") else ""
        click.echo(f"{r['step']:>8}  {r.get('loss', float('nan')):>8.4f}  {r.get('tokens_per_s', 0):>10.0f}  "
                   f"{r.get('world_size', 0):>7}{mark}")


# -- data ----------------------------------------------------------------------
@main.group(cls=_Group)
def data() -> None:
    """Build and inspect Parquet corpora."""


@data.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--shards", type=int, default=4, show_default=True)
@click.option("--max-mb", type=float, default=8.0, show_default=True, help="Corpus size cap.")
@click.option("--source", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Folder of .py sources [default: Python's standard library]; e.g. a held-out corpus "
                   "for `elasticml optimize` from a package the training corpus does not reach.")
@_json_option
def data_build(out: Path, shards: int, max_mb: float, source: Path | None, as_json: bool) -> None:
    """Write a byte-level text corpus from Python sources (the standard library's by default)."""
    from elasticml.data.corpus import MAX_BYTES, build_corpus
    from elasticml.dataconf import check_number

    check_number(max_mb, field="max_mb", lo=1e-6, hi=MAX_BYTES / 1e6)
    manifest = build_corpus(out, num_shards=shards, max_bytes=max(1, int(max_mb * 1e6)), source_dir=source)
    if _emit(as_json, {"out": str(out), "documents": manifest.num_documents, "bytes": manifest.num_bytes,
                       "shards": list(manifest.shards)}):
        return
    click.echo(f"wrote {manifest.num_documents} documents, {manifest.num_bytes / 1e6:.1f} MB, "
               f"{len(manifest.shards)} shards to {out}")


# -- demo ----------------------------------------------------------------------
@main.command("demo")
@click.option("--steps", type=int, default=240, show_default=True, help="Training steps.")
@click.option("--clean", is_flag=True, help="Leave nothing behind (by default the data, checkpoint, ledger and "
              "audit trail stay to explore next).")
def demo_cmd(steps: int, clean: bool) -> None:
    """The guided tour: data, a training job, a Serve endpoint, on an embedded local cluster."""
    from elasticml.demo import run_demo

    run_demo(steps=steps, clean=clean)


def _add_api_commands() -> None:
    from elasticml.api.cli import api, apps, jobs, login

    main.add_command(api)
    main.add_command(apps)
    main.add_command(jobs)
    main.add_command(login)


_add_api_commands()



@main.group(cls=_Group)
def serve() -> None:
    """Serving helpers (the app itself is deployed with `serve deploy serve_apps/...yaml`)."""


@serve.command("keygen")
@click.argument("tenant")
@click.option("--file", "key_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Add the digest to this key file (an app's api_keys_file; mode 0600).")
@_json_option
def serve_keygen(tenant: str, key_file: Path | None, as_json: bool) -> None:
    """A new API key for TENANT: give the key to the tenant; its digest goes to --file or under args.api_keys."""
    import re

    from elasticml.errors import ConfigError
    from elasticml.serve.auth import add_to_key_file, new_key

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", tenant):
        raise ConfigError("must be 1 to 63 letters, digits, - and _", field="tenant")
    key, digest = new_key()
    if key_file is not None:
        add_to_key_file(key_file, tenant, digest)
    if _emit(as_json, {"tenant": tenant, "key": key, "digest": digest, "key_file": str(key_file) if key_file else None}):
        return
    click.echo(f"key (give to {tenant}, shown once): {key}")
    click.echo(f"added to {key_file}" if key_file is not None else f"api_keys entry: {{{tenant}: {digest}}}")


if __name__ == "__main__":
    sys.exit(main())
