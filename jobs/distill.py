"""Distil a student from a teacher checkpoint on Ray Train: the script behind `ray job submit`.

    eval "$(elasticml cluster env)"
    ray job submit --working-dir . -- python jobs/distill.py \\
        --teacher latest:~/.elasticml/runs/train --size tiny --data ~/.elasticml/corpus --steps 200

The student (`--size`, a user's `--model`, or `--init-from` a checkpoint such as a student
`elasticml optimize` pruned) learns the teacher's next-byte distribution at `--temperature`
beside the data's targets (`--alpha` is the teacher's share of the loss; see
elasticml.optimize.distill). It is the training job with a teacher: the same FSDP2 workers (the
teacher sharded like the student), data, checkpoints, resumption after a lost worker, node or
spot VM, and with --tenant the scheduler's placement. Every flag of jobs/train.py works here (elasticml.train.job declares them).
The last line printed is the JSON summary jobs/train.py prints.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from elasticml.entrypoint import as_help, run
from elasticml.train.job import configure, execute, train_options


@click.command("distill.py", help=as_help(__doc__))
@train_options
def command(**flags: Any) -> int:
    # A --config file may name the teacher itself.
    if not flags["teacher"] and not flags["config"]:
        raise click.UsageError("--teacher CHECKPOINT is required (a folder, s3:// URI or latest:RUN_DIR)")
    flags["run_name"] = flags["run_name"] or "distill"
    return execute(*configure(flags))


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, prog="distill.py")


if __name__ == "__main__":
    sys.exit(main())
