"""The `elasticml` command: a thin layer over the Python API.

Every error elasticml raises on purpose (`ElasticMLError`) is printed as one
line, `elasticml: error: ...`, with exit status 2, like click's own usage errors.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from elasticml import labels as L
from elasticml.errors import ElasticMLError


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


@click.group(cls=_Group)
@click.version_option(package_name="elasticml")
def main() -> None:
    """elasticml: elastic, cost-aware ML on Ray."""


# -- cluster -------------------------------------------------------------------
@main.group(cls=_Group)
def cluster() -> None:
    """Run a local elastic Ray cluster from a cluster YAML."""


_name_option = click.option("--name", default="local", show_default=True, help="Cluster name (one state folder each).")


@cluster.command("up")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cluster YAML [default: cluster_configs/local.yaml].")
@_name_option
@click.option("--port", type=int, default=6379, show_default=True, help="GCS port.")
@click.option("--dashboard-port", type=int, default=8265, show_default=True, help="Dashboard / job API port.")
def cluster_up(config_path: Path | None, name: str, port: int, dashboard_port: int) -> None:
    """Start the head; worker nodes come and go with demand for their labels."""
    from elasticml.cluster import LocalCluster, load_cluster_spec
    from elasticml.repo import default_cluster_config

    spec = load_cluster_spec(config_path or default_cluster_config())
    t0 = time.monotonic()
    info = LocalCluster(name).up(spec, port=port, dashboard_port=dashboard_port)
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
def cluster_down(name: str) -> None:
    """Stop every process `cluster up` started, by PID."""
    from elasticml.cluster import LocalCluster

    pids = LocalCluster(name).down()
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
        click.echo(json.dumps({"name": name, "gcs_address": info.gcs_address, "nodes": rows}, indent=2))
        return
    click.echo(f"cluster {name!r}: {len(rows)} alive node(s), dashboard {info.dashboard_url}")
    for r in rows:
        click.echo(f"  {r['node_id'][-8:]}  {r['node_type']:<16} {r['market']:<10} CPU={r['cpus']:<4} {r['labels']}")


@cluster.command("render")
@click.option("--target", type=click.Choice(["local", "aws", "kuberay", "all"]), default="all", show_default=True)
@click.option("--cluster", "cluster_def", default=None, help="A definition in elasticml.provision.definition.")
@click.option("--check", is_flag=True, help="Exit 1 if the committed files differ from what renders.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Repository root.")
def cluster_render(target: str, cluster_def: str | None, check: bool, out: Path | None) -> None:
    """Write (or --check) the local, AWS and KubeRay files generated from the one definition."""
    from elasticml.provision.render import render, render_all
    from elasticml.repo import ROOT

    if target == "all":
        files = render_all()
    else:
        files = render(target, cluster_def or ("local" if target == "local" else "aws-cpu"))
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
        click.echo(f"wrote {rel}")
    if check:
        if stale:
            click.echo("out of date (run `elasticml cluster render`): " + ", ".join(stale), err=True)
            sys.exit(1)
        click.echo(f"{len(files)} generated files are up to date")


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


def _scheduler(name: str, config: Path | None = None):  # type: ignore[no-untyped-def]
    from elasticml.cluster import LocalCluster
    from elasticml.scheduler.client import SchedulerClient

    LocalCluster(name).require_info().connect()
    return SchedulerClient.connect(cluster_config=config, cluster_name=name)


def _echo_decisions(decisions: list[dict]) -> None:  # type: ignore[type-arg]
    for d in decisions:
        where = ", ".join(f"{a['workers']}x {a['node_type']} ({a['market']})" for a in d["allocations"])
        cost = f" ${d['hourly_cost']:.4f}/h" if d["allocations"] else ""
        click.echo(f"{d['workload']}: {d['action']}{' -> ' + where if where else ''}{cost}")
        click.echo(f"  why: {d['reason']}")
        if d.get("ray_options"):
            click.echo(f"  ray options: {json.dumps(d['ray_options'])}")


@scheduler.command("submit")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@_name_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def scheduler_submit(spec_file: Path, name: str, config_path: Path | None) -> None:
    """Place the workload described in SPEC_FILE (YAML)."""
    import yaml

    from elasticml.errors import ConfigError
    from elasticml.scheduler.spec import WorkloadSpec

    try:
        raw = yaml.safe_load(spec_file.read_text())
    except FileNotFoundError:
        raise ConfigError("no such file", source=str(spec_file)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {str(exc).splitlines()[0]}", source=str(spec_file)) from None
    spec = WorkloadSpec.from_dict(raw, source=str(spec_file))  # refuse bad specs before touching the cluster
    _echo_decisions(_scheduler(name, config_path).submit(spec.to_dict()))


@scheduler.command("status")
@_name_option
@click.option("--json", "as_json", is_flag=True)
def scheduler_status(name: str, as_json: bool) -> None:
    """Pools, what runs where, and the queue."""
    st = _scheduler(name).status()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"price catalog {st['catalog_version']}")
    for p in st["pools"]:
        flag = "  INTERRUPTED" if p["interrupted"] else ""
        click.echo(f"  {p['node_type']:<16} {p['market']:<10} {p['instance_type']:<12} ${p['hourly_price']:.4f}/h "
                   f"{p['used_nodes']}/{p['max_nodes']} nodes{flag}")
    for w, allocs in st["running"].items():
        click.echo(f"  running {w}: " + ", ".join(f"{a['workers']}x {a['node_type']}" for a in allocs))
    if st["queued"]:
        click.echo(f"  queued: {', '.join(st['queued'])}")


@scheduler.command("explain")
@click.argument("workload")
@_name_option
def scheduler_explain(workload: str, name: str) -> None:
    """Every decision taken for WORKLOAD, with its reason."""
    decisions = _scheduler(name).explain(workload)
    if not decisions:
        click.echo(f"no decisions recorded for {workload!r}")
    _echo_decisions(decisions)


@scheduler.command("finish")
@click.argument("workload")
@_name_option
def scheduler_finish(workload: str, name: str) -> None:
    """Mark WORKLOAD done: its capacity goes to the queue and to cheaper moves."""
    _echo_decisions(_scheduler(name).finish(workload))


@scheduler.command("interrupt")
@click.argument("node_type")
@_name_option
def scheduler_interrupt(node_type: str, name: str) -> None:
    """Report a spot interruption notice for NODE_TYPE; its work is re-placed."""
    result = _scheduler(name).interrupt(node_type)
    _echo_decisions(result["decisions"])
    click.echo(f"drained {len(result['drained_nodes'])} node(s) of {node_type} as preempted")


@main.group(cls=_Group)
def cost() -> None:
    """What the cluster's workloads cost."""


@cost.command("report")
@_name_option
@click.option("--json", "as_json", is_flag=True)
def cost_report(name: str, as_json: bool) -> None:
    """Cost per tenant, workload and market, and savings against all on-demand."""
    report = _scheduler(name).cost_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for column in ("tenant", "workload", "market"):
        click.echo(f"by {column}:")
        for r in report[column]:
            click.echo(f"  {r['key']:<20} ${r['cost']:.6f}  (on-demand ${r['on_demand_cost']:.6f}, "
                       f"saved ${r['savings']:.6f})  {r['worker_hours']:.4f} worker-h")
    t = report["total"]
    click.echo(f"total ${t['cost']:.6f}; all on-demand would be ${t['on_demand_cost']:.6f}: "
               f"saved {t['savings_pct']:.1f}% over {report['intervals']} allocation intervals")


# -- data ----------------------------------------------------------------------
@main.group(cls=_Group)
def data() -> None:
    """Build and inspect Parquet corpora."""


@data.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--shards", type=int, default=4, show_default=True)
@click.option("--max-mb", type=float, default=8.0, show_default=True, help="Corpus size cap.")
def data_build(out: Path, shards: int, max_mb: float) -> None:
    """Write a byte-level text corpus from Python's standard library sources."""
    from elasticml.data.corpus import build_corpus

    manifest = build_corpus(out, num_shards=shards, max_bytes=int(max_mb * 1e6))
    click.echo(f"wrote {manifest.num_documents} documents, {manifest.num_bytes / 1e6:.1f} MB, "
               f"{len(manifest.shards)} shards to {out}")


# -- demo ----------------------------------------------------------------------
@main.command("demo")
@click.option("--steps", type=int, default=240, show_default=True, help="Training steps.")
@click.option("--keep-workdir", is_flag=True, help="Keep the demo's data and checkpoints.")
def demo_cmd(steps: int, keep_workdir: bool) -> None:
    """The guided tour: data, a training job, a Serve endpoint, on an embedded local cluster."""
    from elasticml.demo import run_demo

    run_demo(steps=steps, keep_workdir=keep_workdir)


if __name__ == "__main__":
    sys.exit(main())


@main.group(cls=_Group)
def serve() -> None:
    """Serving helpers (the app itself is deployed with `serve deploy serve_apps/...yaml`)."""


@serve.command("keygen")
@click.argument("tenant")
def serve_keygen(tenant: str) -> None:
    """A new API key for TENANT: give the key to the tenant, put the digest line under args.api_keys."""
    from elasticml.serve.auth import new_key

    key, digest = new_key()
    click.echo(f"key (give to {tenant}, shown once): {key}")
    click.echo(f"api_keys entry: {{{tenant}: {digest}}}")
