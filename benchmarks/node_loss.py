"""Time from losing a spot node to training resumed, on the local elastic cluster.

    python benchmarks/node_loss.py [--rounds 3] [--json OUT | --no-json]

Brings up the local elastic cluster of cluster_configs/local.yaml (as the integration tests do) and
builds the small corpus, then, each round: submits jobs/train.py on spot (2 workers, a sharded
checkpoint every 10 steps), waits for step 25 (between two checkpoints, so which one it resumes
from does not depend on a race with the checkpoint being written), kills the raylet of a spot node
that runs a worker and every process under it (as a reclaimed instance vanishes), and times from
the kill:

    dead_s      until Ray reports the node dead (its health check gives up)
    replaced_s  until a new spot node is alive (the autoscaler's replacement)
    resumed_s   until the job's log says it resumed from a checkpoint (the log is polled about
                every 0.5 s, so this may be up to about a second late)

with the last step logged before the kill, the newest checkpoint complete in storage just after it
(registered by Ray Train's controller or not), the step it resumed from and whether that checkpoint
was one the controller had not registered (loop.py says so in the log). The job is then stopped:
that the run finishes where it should is what tests/integration/spot/test_train_node_loss.py
checks. The times are this 2-core machine's, with the cluster's processes sharing the cores; they
say where the time goes (detection, replacement, restart), not what a cloud would take, where a
new VM boots in minutes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import record  # benchmarks/record.py: a script's own folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
RESUMED = re.compile(r"resumed from step (\d+) \(next sample (\d+), (\d+) workers\)")
PAST_REGISTERED = "a complete checkpoint newer than the run's last registered one"
"""What loop.py logs when it resumes from a checkpoint Ray Train's controller had not registered."""
LOST_AT_STEP = 25
STEP = re.compile(r"step (\d+)/")
STEPS = 200
"""Long enough that the run is still training when it resumes (it is stopped then)."""
ROUND_LIMIT_S = 600.0
POLL_S = 0.25


def resumed_step(logs: str) -> int | None:
    """The step the job's log says it resumed from, or None before it has."""
    match = RESUMED.search(logs)
    return int(match.group(1)) if match else None


def last_step(logs: str) -> int | None:
    """The highest step the job's log reports, or None before the first."""
    return max((int(s) for s in STEP.findall(logs)), default=None)


def spot_nodes() -> dict[str, bool]:
    """Spot nodes Ray knows: node id -> alive."""
    import ray

    from elasticml import labels as L

    return {n["NodeID"]: bool(n["Alive"]) for n in ray.nodes() if L.market_of(n["Labels"]) == "spot"}


def one_round(cluster: Any, client: Any, corpus: Path, storage: Path, k: int) -> dict[str, Any]:
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors

    job = client.submit_job(
        entrypoint=f"python jobs/train.py --data {corpus} --storage-path {storage} --run-name loss{k} "
                   f"--steps {STEPS} --workers 2 --global-batch 4 --report-every 5 --checkpoint-every 10 "
                   "--market spot",
        runtime_env={"working_dir": str(REPO)})
    deadline = time.monotonic() + ROUND_LIMIT_S

    def logs() -> str:
        status = client.get_job_status(job)
        text = client.get_job_logs(job)
        if status not in (JobStatus.PENDING, JobStatus.RUNNING) or time.monotonic() > deadline:
            raise RuntimeError(f"round {k}: job {status}, or past {ROUND_LIMIT_S:.0f} s:\n{text[-3000:]}")
        return text

    while (last_step(text := logs()) or 0) < LOST_AT_STEP:
        time.sleep(0.5)
    workers = {a.node_id for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                                                limit=1000)}
    before = spot_nodes()
    victim = next((n for n, alive in before.items() if alive and n in workers), None)
    if victim is None:
        raise RuntimeError(f"round {k}: no alive spot node runs a train worker ({before}, workers on {workers})")
    seen = last_step(text)
    t0 = time.monotonic()
    cluster.kill_node(victim)
    newest = newest_step(storage / f"loss{k}")
    dead = replaced = resumed = None
    step = None
    next_log = t0
    while resumed is None or dead is None or replaced is None:
        now = time.monotonic() - t0
        nodes = spot_nodes()
        if dead is None and not nodes.get(victim, False):
            dead = now
        if replaced is None and any(alive and n not in before for n, alive in nodes.items()):
            replaced = now
        if resumed is None and time.monotonic() >= next_log:
            step = resumed_step(logs())
            resumed = now if step is not None else None
            next_log = time.monotonic() + 0.5
        if time.monotonic() > deadline:
            raise RuntimeError(f"round {k}: dead {dead}, replaced {replaced}, resumed {resumed} after "
                               f"{ROUND_LIMIT_S:.0f} s")
        time.sleep(POLL_S)
    past_registered = PAST_REGISTERED in logs()
    client.stop_job(job)
    stop_by = time.monotonic() + 60
    while client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING):
        if time.monotonic() > stop_by:
            raise RuntimeError(f"round {k}: job {job} still running 60 s after it was stopped")
        time.sleep(0.5)
    return {"round": k, "dead_s": round(dead, 2), "replaced_s": round(replaced, 2), "resumed_s": round(resumed, 2),
            "resumed_from_step": step, "last_step_logged": seen, "newest_complete_at_loss": newest,
            "past_registered": past_registered}


def newest_step(run: Path) -> int | None:
    """The step of the run's newest complete checkpoint in storage (registered by Ray Train or not), or None."""
    from elasticml.train.checkpoint import newest_complete

    newest = newest_complete(run)
    return None if newest is None else newest[0]


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each time's median and spread over the rounds, and in how many the run resumed from the newest
    checkpoint complete in storage at the loss."""
    out: dict[str, Any] = {key: record.spread([r[key] for r in rounds])
                           for key in ("dead_s", "replaced_s", "resumed_s")}
    out["resumed_from_newest"] = sum(1 for r in rounds if r["newest_complete_at_loss"] is not None
                                     and r["resumed_from_step"] >= r["newest_complete_at_loss"])
    out["past_registered"] = sum(1 for r in rounds if r.get("past_registered"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    record.add_arguments(ap, __file__)
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        ap.error("--rounds in 1..20")
    rec = record.start(__file__, args, argv)
    from ray.job_submission import JobSubmissionClient

    from elasticml.cluster import LocalCluster, load_cluster_spec
    from elasticml.data.corpus import build_corpus

    rounds: list[dict[str, Any]] = []
    setting = {"steps": STEPS, "lost_at_step": LOST_AT_STEP, "workers": 2, "checkpoint_every": 10}
    with tempfile.TemporaryDirectory(prefix="node-loss-") as tmp:
        corpus = Path(tmp) / "corpus"
        build_corpus(corpus, num_shards=4, max_bytes=600_000)
        cluster = LocalCluster("bench-node-loss")
        info = cluster.up(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"))
        try:
            info.connect()
            client = JobSubmissionClient(info.dashboard_url)
            for k in range(args.rounds):
                r = one_round(cluster, client, corpus, Path(tmp) / "runs", k)
                print(f"round {k}: lost after step {r['last_step_logged']} (newest complete checkpoint: step "
                      f"{r['newest_complete_at_loss']}); node dead after {r['dead_s']:.1f} s, replaced after "
                      f"{r['replaced_s']:.1f} s, resumed from step {r['resumed_from_step']} after "
                      f"{r['resumed_s']:.1f} s", flush=True)
                rounds.append(r)
                rec.write(samples=rounds, summary=summarise(rounds), setting=setting, rounds_done=k + 1)
        finally:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            cluster.down()
    summary = summarise(rounds)
    for key in ("dead_s", "replaced_s", "resumed_s"):
        s = summary[key]
        print(f"{key}: median {s['median']:.1f} s ({s['min']:.1f} to {s['max']:.1f}) over {len(rounds)} rounds")
    print(f"resumed from the newest checkpoint complete at the loss in {summary['resumed_from_newest']} of "
          f"{len(rounds)} rounds; from one Ray Train had not registered in {summary['past_registered']}")
    rec.write(samples=rounds, summary=summary, setting=setting, rounds_done=len(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
