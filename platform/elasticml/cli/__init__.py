"""The `elasticml` command: a thin layer over the Python API, one module per command group.

    cluster     cluster.py      a local elastic Ray cluster; the files that describe cloud ones
    scheduler   scheduler.py    the cost-aware scheduler: start, place, explain, credentials
    audit       audit.py        its tamper-evident audit trail
    cost        cost.py         what workloads cost
    checkpoint  checkpoint.py   verify, sign, copy
    optimize    optimize.py     smaller, faster candidates (and `release`, one of them into Serve)
    train       train.py        training runs' reports
    data        data.py         corpora
    serve       serve.py        serving helpers
    demo        demo.py         the guided tour
    login, api, jobs, apps      api.py: the API server and a tenant's way to it

options.py holds what the groups share. Every error ends through elasticml.entrypoint: an
`ElasticMLError` is printed as one line, `elasticml: error: ...`, with exit status 2, like click's
own usage errors.
"""

from __future__ import annotations

import os

import click

from elasticml.cli import (
    api,
    audit,
    checkpoint,
    cluster,
    cost,
    data,
    demo,
    optimize,
    scheduler,
    serve,
    train,
)
from elasticml.entrypoint import EntryGroup

__all__ = ["main", "scheduler_start"]


def _use_endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        os.environ["ELASTICML_ENDPOINT"] = value


@click.group(cls=EntryGroup, prog="elasticml")
@click.version_option(package_name="elasticml")
@click.option("--endpoint", expose_value=False, callback=_use_endpoint, is_eager=True,
              help="Reach the scheduler through this API server with your credential, not through Ray "
                   "[default: $ELASTICML_ENDPOINT, then `elasticml login`'s].")
def main() -> None:
    """elasticml: elastic, cost-aware ML on Ray."""


for _command in (cluster.cluster, scheduler.scheduler, checkpoint.checkpoint, optimize.optimize_cmd,
                 optimize.release_cmd, audit.audit, cost.cost, train.train, data.data, demo.demo_cmd, api.api, api.apps,
                 api.jobs, api.login, serve.serve):
    main.add_command(_command)

scheduler_start = scheduler.scheduler_start
