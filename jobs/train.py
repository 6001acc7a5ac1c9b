"""Train the reference transformer on Ray Train: the script behind `ray job submit`.

    eval "$(elasticml cluster env)"
    ray job submit --working-dir . -- python jobs/train.py \\
        --data ~/.elasticml/corpus --steps 20 --workers 2 --market spot

With --tenant (and --priority, --deadline-hours), the job asks the cluster's
cost-aware scheduler where to run and then follows it: its placement sets the
pool and the number of workers; when the scheduler moves the job (spot lost or
back, a deadline policy's choice, cheaper capacity), the workers checkpoint at
their next report point, the run ends, and a new run resumes from that
checkpoint on the new pool. It reports its progress and, at the end, that it
finished.

Flags override a YAML file given with --config (elasticml.train.job declares them and
runs the job; elasticml.train.follow follows the scheduler). The last line printed is a
JSON summary (`{"event": "train_done", "checkpoint": ..., ...}`) that tools
can parse from the job's logs.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from elasticml.entrypoint import as_help, run
from elasticml.train.job import configure, execute, train_options


@click.command("train.py", help=as_help(__doc__))
@train_options
def command(**flags: Any) -> int:
    return execute(*configure(flags))


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, prog="train.py")


if __name__ == "__main__":
    sys.exit(main())
