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


@cluster.command("env")
@_name_option
def cluster_env(name: str) -> None:
    """Print the exports that let `ray job submit` and Ray clients reach the cluster."""
    from elasticml.cluster import LocalCluster

    for key, value in LocalCluster(name).require_info().client_env().items():
        click.echo(f"export {key}={value}")


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
