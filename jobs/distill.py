"""Distil a student from a teacher checkpoint on Ray Train: the script behind `ray job submit`.

    eval "$(elasticml cluster env)"
    ray job submit --working-dir . -- python jobs/distill.py \
        --teacher latest:~/.elasticml/runs/train --size tiny --data ~/.elasticml/corpus --steps 200

The student (`--size`, a user's `--model`, or `--init-from` a checkpoint such as a student
`elasticml optimize` pruned) learns the teacher's next-byte distribution at `--temperature`
beside the data's targets (`--alpha` is the teacher's share of the loss; see
elasticml.optimize.distill). It is the training job with a teacher: the same FSDP2 workers (the
teacher sharded like the student), data, checkpoints, resumption after a lost worker, node or
spot VM, and with --tenant the scheduler's placement. Every flag of jobs/train.py works here.
The last line printed is the JSON summary jobs/train.py prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import main as train_main  # noqa: E402  (the job's own folder is not a package)


def main(argv: list[str]) -> int:
    # --help must reach train.py's parser, which lists --teacher with every other flag.
    wants_help = "-h" in argv or "--help" in argv
    # A --config file may name the teacher itself.
    has_teacher = any(a == "--teacher" or a.startswith("--teacher=") for a in argv) or "--config" in argv
    if not wants_help and not has_teacher:
        print("distill.py: error: --teacher CHECKPOINT is required (a folder, s3:// URI or latest:RUN_DIR)",
              file=sys.stderr)
        return 2
    if not any(a == "--run-name" or a.startswith("--run-name=") for a in argv):
        argv = [*argv, "--run-name", "distill"]
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
