"""`elasticml cluster`: a local elastic Ray cluster from a cluster YAML, and the files that describe cloud ones."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import click

from elasticml import labels as L
from elasticml.cli.options import emit, json_option, name_option
from elasticml.cluster.spot_market import MarketSettings
from elasticml.entrypoint import default_of


@click.group()
def cluster() -> None:
    """Run a local elastic Ray cluster from a cluster YAML."""




@cluster.command("up")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cluster YAML [default: cluster_configs/local.yaml].")
@name_option
@click.option("--port", type=int, default=6379, show_default=True, help="GCS port.")
@click.option("--dashboard-port", type=int, default=8265, show_default=True, help="Dashboard / job API port.")
@click.option("--spot-trace", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Replay this spot availability trace on the spot node types (0 = available).")
@click.option("--start-hour", type=float, default=default_of(MarketSettings, "start_hour"), show_default=True, help="Trace hour the replay starts at.")
@click.option("--seconds-per-hour", type=float,
              default=default_of(MarketSettings, "seconds_per_hour"), show_default=True, help="Wall seconds per trace hour.")
@click.option("--price-ratio", type=float, default=default_of(MarketSettings, "price_ratio"), show_default=True, help="On-demand / spot price.")
@click.option("--notice-seconds", type=float, default=default_of(MarketSettings, "notice_seconds"), show_default=True,
              help="Seconds between an outage's interruption notice and the reclaim of spot nodes.")
@json_option
def cluster_up(config_path: Path | None, name: str, port: int, dashboard_port: int, spot_trace: Path | None,
               start_hour: float, seconds_per_hour: float, price_ratio: float, notice_seconds: float,
               as_json: bool) -> None:
    """Start the head; worker nodes come and go with demand for their labels."""
    from elasticml.cluster import LocalCluster, load_cluster_spec
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
    if emit(as_json, {"cluster": name, "up_s": round(time.monotonic() - t0, 1), "gcs_address": info.gcs_address,
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
@name_option
@json_option
def cluster_down(name: str, as_json: bool) -> None:
    """Stop every process `cluster up` started, by PID."""
    from elasticml.cluster import LocalCluster

    pids = LocalCluster(name).down()
    if emit(as_json, {"cluster": name, "stopped": len(pids)}):
        return
    click.echo(f"cluster {name!r} is down ({len(pids)} processes stopped)")


@cluster.command("status")
@name_option
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
@click.option("--target", type=click.Choice(["local", "aws", "kuberay", "all"]), default="all", show_default=True,
              help="Which files: the local cluster's, the AWS launcher's, the KubeRay manifests, or all.")
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
@json_option
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
@json_option
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
    if emit(as_json, {"agent_credential": str(folder / "agent"), "ca_certificate": str(folder / "tls" / "ca.crt"),
                       "checkpoint_key": str(key)}):
        return
    click.echo(f"node agents' credential: {folder / 'agent'} (mode 0600)")
    click.echo(f"Ray TLS CA: {folder / 'tls' / 'ca.crt'} (its key, mode 0600, beside it)")
    click.echo(f"checkpoint key: {key} (mode 0600)")


@cluster.command("prometheus-config")
@name_option
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
@name_option
def cluster_env(name: str) -> None:
    """Print the exports that let `ray job submit` and Ray clients reach the cluster."""
    from elasticml.cluster import LocalCluster

    for key, value in LocalCluster(name).require_info().client_env().items():
        click.echo(f"export {key}={value}")
