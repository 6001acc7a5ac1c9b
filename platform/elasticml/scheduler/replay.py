"""`python -m elasticml.scheduler.replay`: a real spot market replayed on the local cluster, a real job steered through it.

    python -m elasticml.scheduler.replay --trace T.json --start-hour S --job-hours H --deadline-hours D \\
        --restart-hours R --price-ratio K --seconds-per-hour X [--policy P] [--step-seconds P] --json

It starts the local cluster with the spot market replaying T from hour S (or
uses the cluster `--name` if it is up with that market), submits a
checkpointable training job through the scheduler with that deadline (paced so
that one trace hour of work takes X seconds of training), lets the controller
steer it to the end, and prints one JSON object: whether the deadline was met,
the live cost, spot and on-demand hours, restarts and moves as the ledger and
the scheduler recorded them, the same from the simulator on the same trace and
policy, and the training steps lost.

What it does with time: the market's clock runs X wall seconds per trace hour,
but stands still while the scheduler carries out a placement (the job
checkpoints, stops, and starts on its new pool: seconds that the compression
would inflate into hours). Each start then costs R trace hours on the new pool,
spent by the job waiting before its first step, paid and without progress, as
the simulator charges a restart. Costs are in spot-hours: a spot hour costs 1,
an on-demand (or reserved) hour K. Hours are trace hours.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from elasticml import entrypoint
from elasticml.entrypoint import FINITE, as_help, default_of
from elasticml.errors import ConfigError, ElasticMLError
from elasticml.scheduler.deadline import NONE, OD, SPOT, Instance, JobParams
from elasticml.scheduler.policies import DEFAULT_POLICY, POLICIES

TENANT = "replay"
MIN_TICK_SECONDS = 2.0
"""A trace tick must last this long on the wall clock, so the controller (1 s) sees every one."""


@dataclass(kw_only=True, frozen=True)
class ReplayArgs:
    """What to replay, as the flags give it; `check` refuses what cannot be replayed."""

    trace: Path
    job_hours: float
    deadline_hours: float
    restart_hours: float
    price_ratio: float
    seconds_per_hour: float
    start_hour: float = 0.0
    policy: str = DEFAULT_POLICY
    step_seconds: float = 0.25
    name: str = "replay"
    data: Path | None = None
    as_json: bool = False


def _default(name: str) -> dict[str, Any]:
    return {"default": default_of(ReplayArgs, name), "show_default": True}


@click.command("replay", help=as_help(__doc__))
@click.option("--trace", required=True, type=click.Path(path_type=Path),
              help='Trace JSON: {"metadata": {"gap_seconds": G}, "data": [0/1, ...]}, 0 = spot available.')
@click.option("--start-hour", type=FINITE, **_default("start_hour"), help="Trace hour the replay starts at.")
@click.option("--job-hours", type=FINITE, required=True, help="Hours of work the job needs.")
@click.option("--deadline-hours", type=FINITE, required=True, help="Hours after the start it must be done by.")
@click.option("--restart-hours", type=FINITE, required=True, help="What each start costs the job, in hours.")
@click.option("--price-ratio", type=FINITE, required=True, help="On-demand price per hour / spot price per hour.")
@click.option("--seconds-per-hour", type=FINITE, required=True, help="Wall seconds per trace hour.")
@click.option("--policy", **_default("policy"), help=f"One of {', '.join(POLICIES)}.")
@click.option("--step-seconds", type=FINITE, **_default("step_seconds"), help="The pace of a training step.")
@click.option("--name", **_default("name"), help="Local cluster name (used if up with this market, else started).")
@click.option("--data", type=click.Path(path_type=Path), help="Corpus folder [default: a small one built for the replay].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output too).")
def command(**flags: Any) -> int:
    print(json.dumps(run(ReplayArgs(**flags))))
    return 0


def parse(argv: list[str]) -> ReplayArgs:
    """The flags as ReplayArgs, without running anything (click's usage errors raised as they are)."""
    return ReplayArgs(**command.make_context("replay", list(argv)).params)


def check(args: ReplayArgs) -> tuple[list[bool], float, JobParams]:
    """Everything refused before a cluster starts: the trace, the numbers, whether the deadline can be met."""
    from elasticml.scheduler.traces import load_trace

    availability, gap_h = load_trace(args.trace)
    if args.policy not in POLICIES:
        raise ConfigError(f"must be one of {', '.join(POLICIES)}, got {args.policy[:40]!r}", field="policy")
    # JobParams refuses a deadline that on-demand from the start could not meet, with the numbers.
    params = JobParams(job_hours=args.job_hours, deadline_hours=args.deadline_hours,
                       restart_hours=args.restart_hours, price_ratio=args.price_ratio)
    trace_h = len(availability) * gap_h
    if not 0 <= args.start_hour or args.start_hour + args.deadline_hours > trace_h + 1e-9:
        raise ConfigError(f"the trace covers {trace_h:g}h; start {args.start_hour:g}h + deadline {args.deadline_hours:g}h "
                          "runs past its end", field="trace", source=str(args.trace))
    if gap_h * args.seconds_per_hour < MIN_TICK_SECONDS:
        raise ConfigError(f"a trace tick ({gap_h * 3600:g}s) would last {gap_h * args.seconds_per_hour:.2f}s; "
                          f"give at least {MIN_TICK_SECONDS / gap_h:g} seconds per hour", field="seconds_per_hour")
    if not 0.01 <= args.step_seconds <= 60:
        raise ConfigError(f"must be in [0.01, 60], got {args.step_seconds}", field="step_seconds")
    return availability, gap_h, params


def _summarise(decisions: Sequence[str]) -> dict[str, int]:
    """Restarts (launches after the first) and moves (spot <-> on-demand while running) from per-tick choices."""
    launches = moves = 0
    prev: str = NONE
    for d in decisions:
        if d != prev and d != NONE:
            launches += 1
            moves += prev != NONE
        prev = d
    return {"restarts": max(0, launches - 1), "moves": moves}


def simulated(args: ReplayArgs, availability: list[bool], gap_h: float, params: JobParams) -> dict[str, Any]:
    from elasticml.scheduler.deadline import simulate

    skip = math.floor(args.start_hour / gap_h + 1e-9)
    decisions: list[Instance] = []
    result = simulate(POLICIES[args.policy](), availability[skip:], gap_h, params, history=availability[:skip],
                      decisions=decisions)
    ran = decisions[: math.ceil((result.finish_hour or len(decisions) * gap_h) / gap_h - 1e-9)]
    return {"cost": result.cost, "spot_hours": result.spot_hours, "on_demand_hours": result.on_demand_hours,
            **_summarise(ran), "finish_hours": result.finish_hour, "finished_by_deadline": result.finished_by_deadline}


def live(records: list[dict[str, Any]], intervals: list[dict[str, Any]], *, t0: float, seconds_per_hour: float,
         price_ratio: float) -> dict[str, Any]:
    """The ledger's intervals (market seconds) in trace hours and spot-hour prices, the decisions' restarts,
    and the hour its work was done."""
    spot_h = od_h = 0.0
    end = t0
    for i in intervals:
        hours = ((i["end"] or i["start"]) - i["start"]) / seconds_per_hour
        end = max(end, i["end"] or i["start"])
        if i["market"] == "spot":
            spot_h += hours
        else:
            od_h += hours
    # Finished when its work was done and saved (its report), not when its workers had shut down.
    done = next((r["at"] for r in records if r.get("action") == "done"), None)
    end = end if done is None else done
    choices = []
    for r in records:
        if r.get("action") in ("place", "move"):
            allocs = r.get("allocations") or []
            choices.append(SPOT if allocs and allocs[0]["market"] == "spot" else OD)
        elif r.get("action") in ("pause", "preempt", "queue"):
            choices.append(NONE)
    return {"cost": round(spot_h + od_h * price_ratio, 6), "spot_hours": round(spot_h, 6),
            "on_demand_hours": round(od_h, 6), **_summarise(choices),
            "finish_hours": round((end - t0) / seconds_per_hour, 6)}


def _steps_lost(logs: str) -> int:
    lost = 0
    for line in logs.splitlines():
        if line.startswith('{"event": "moved"'):
            moved = json.loads(line)
            lost += max(0, int(moved["at_step"]) - int(moved.get("checkpoint_step") or 0))
    return lost


def run(args: ReplayArgs) -> dict[str, Any]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from elasticml.cluster import LocalCluster, load_cluster_spec
    from elasticml.cluster.spot_market import MarketSettings, SpotMarket, market_path
    from elasticml.repo import CLUSTER_CONFIGS, ROOT
    from elasticml.scheduler.client import SchedulerClient

    availability, gap_h, params = check(args)
    settings = MarketSettings(trace=str(args.trace.resolve()), start_hour=args.start_hour,
                              seconds_per_hour=args.seconds_per_hour, price_ratio=args.price_ratio)
    cluster = LocalCluster(args.name)
    started_here = cluster.info() is None
    if started_here:
        cluster.up(load_cluster_spec(CLUSTER_CONFIGS / "local.yaml"), market=settings)
    try:
        info = cluster.require_info()
        market = SpotMarket.load(market_path(cluster.dir))
        if (market.settings.trace, market.settings.start_hour, market.settings.seconds_per_hour,
                market.settings.price_ratio) != (settings.trace, settings.start_hour, settings.seconds_per_hour,
                                                 settings.price_ratio):
            raise ConfigError(f"cluster {args.name!r} is up replaying another market ({market.settings}); "
                              "take it down or pick another --name", field="name")
        data = args.data or _corpus()
        info.connect()
        sched = SchedulerClient.connect()
        run_name = f"replay-{int(time.time())}"
        steps = max(1, round(args.job_hours * args.seconds_per_hour / args.step_seconds))
        # A report (where a move is noticed) about every 2 s: each one waits for Ray Train's controller.
        report_every = max(1, round(2.0 / args.step_seconds))
        # The replay starts now, at start_hour, with its clock held until the job's first placement is carried out.
        market.restart(held=True)
        t0 = market.now()
        client = JobSubmissionClient(info.dashboard_url)
        entry = (f"python jobs/train.py --data {data} --storage-path {tempfile.mkdtemp(prefix='replay-')} "
                 f"--run-name {run_name} --steps {steps} --workers 1 --global-batch 2 --report-every {report_every} "
                 f"--min-step-seconds {args.step_seconds} --tenant {TENANT} --priority low "
                 f"--expected-hours {args.job_hours} --deadline-hours {args.deadline_hours} "
                 f"--restart-hours {args.restart_hours} --spot-policy {args.policy}")
        job = client.submit_job(entrypoint=entry, runtime_env={
            "working_dir": str(ROOT), "env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
        limit = time.monotonic() + 600 + args.deadline_hours * args.seconds_per_hour * 3
        records: list[dict[str, Any]] = []
        while True:
            status = client.get_job_status(job)
            if sched.placement(run_name) is not None:
                records = sched.explain(run_name)  # kept while it runs: finish forgets the workload's state
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            if time.monotonic() > limit:
                client.stop_job(job)
                raise ElasticMLError(f"the replayed job did not finish in time; its logs: {client.get_job_logs(job)[-2000:]}")
            time.sleep(1.0)
        logs = client.get_job_logs(job)
        if status != JobStatus.SUCCEEDED:
            raise ElasticMLError(f"the replayed job ended {status}: {logs[-3000:]}")
        records = sched.explain(run_name) or records
        ours = live(records, sched.intervals(run_name), t0=t0, seconds_per_hour=args.seconds_per_hour,
                    price_ratio=args.price_ratio)
        sim = simulated(args, availability, gap_h, params)
        return {
            "finished_by_deadline": ours["finish_hours"] <= args.deadline_hours + 1e-6,
            "live": ours,
            "simulated": sim,
            "cost_ratio": round(ours["cost"] / sim["cost"], 4) if sim["cost"] else None,
            "steps_lost": _steps_lost(logs),
            "steps": steps,
            "policy": args.policy,
            "trace": str(args.trace),
        }
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if started_here and cluster.info() is not None:
            cluster.down()


def _corpus() -> Path:
    from elasticml.data.corpus import build_corpus

    out = Path(tempfile.mkdtemp(prefix="replay-corpus-")) / "corpus"
    build_corpus(out, num_shards=2, max_bytes=300_000)
    return out


def main(argv: list[str] | None = None) -> int:
    import signal

    # A stop (Ctrl-C, SIGTERM) still takes down the cluster this command started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return entrypoint.run(command, argv, prog="replay")


if __name__ == "__main__":
    sys.exit(main())
