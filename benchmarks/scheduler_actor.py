"""Placements per second through the scheduler actor's door and the API server, with the audit trail, and their latency.

    python benchmarks/scheduler_actor.py [--requests 2000] [--in-flight 32] [--rounds 3] [--json OUT]

What ships, side by side in one run, the three sides interleaved over `--rounds` rounds:
- actor: `--in-flight` callers' place/finish requests through the named actor (credential
  checked, request rebuilt, audited, group-committed: one trail append and one SQLite commit,
  each fsynced, per batch), a Ray round trip each;
- in-process: the same callers through the same door and group commit on the same kind of
  store, without Ray (the ratio actor / in-process is Ray's share);
- one at a time: one caller through the door in process (a commit and a trail fsync each);
- api: the same callers over HTTP on loopback through the API server (an actor on the head,
  default rate limits on: 200 requests/s a credential), each caller with its own credential.
Every request is a placement or a finish; a placement refused (a budget) or queued is an
answer too and is counted apart. Latency is per request, from submit to answer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray

from elasticml.cluster.config import load_cluster_spec
from elasticml.errors import PlacementRefused
from elasticml.repo import CLUSTER_CONFIGS
from elasticml.scheduler.client import SchedulerClient
from elasticml.scheduler.group_commit import GroupCommit
from elasticml.scheduler.identity import admin_credential, digest
from elasticml.scheduler.shell import open_shell
from elasticml.scheduler.spec import WorkloadSpec

GOAL_PER_S = 2000.0
GOAL_P99_MS = 5.0
API_GOAL_PER_S = 1000.0
API_GOAL_P99_MS = 10.0


def workload(i: int) -> WorkloadSpec:
    kinds = ["training", "batch", "serving", "sweep"]
    prios = ["high", "normal", "low", "preemptible"]
    return WorkloadSpec(name=f"w{i}", tenant=f"t{i % 3}", kind=kinds[i % 4], priority=prios[i % 4],  # type: ignore[arg-type]
                        min_workers=1, max_workers=1 + i % 2, checkpoint_interval_hours=0.5 if i % 2 else None)


def run_callers(client: SchedulerClient | list[SchedulerClient], first: int, n: int, callers: int) -> dict[str, Any]:
    """n placements (each followed later by its finish) from `callers` threads (each its own client when
    given a list); latencies and verdicts."""
    clients = client if isinstance(client, list) else [client] * callers
    lat: list[float] = []
    verdicts = {"placed": 0, "queued": 0, "refused": 0}
    lock = threading.Lock()
    per = n // callers

    def caller(c: int) -> None:
        client = clients[c]
        mine, seen = [], {"placed": 0, "queued": 0, "refused": 0}
        for k in range(per):
            i = first + c * per + k
            t = time.perf_counter()
            try:
                p = client.place(workload(i))
                seen["placed" if p.placed else "queued"] += 1
            except PlacementRefused:
                seen["refused"] += 1
            mine.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.finish(f"w{i}")
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)
            for key, v in seen.items():
                verdicts[key] += v

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": len(lat), "wall_s": wall, "per_s": len(lat) / wall, "lat": lat, **verdicts}


def stats(lat: list[float]) -> dict[str, float]:
    q = statistics.quantiles(lat, n=100)
    return {"p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}


def commit_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="placements per side per round (each also finished)")
    p.add_argument("--in-flight", type=int, default=8, help="concurrent callers (Little: 2,000/s at 4 ms is 8 in flight)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    config = load_cluster_spec(CLUSTER_CONFIGS / "aws-cpu.yaml")  # pools of a real size: 14 nodes
    tmp = Path(tempfile.mkdtemp())
    os.environ["ELASTICML_HOME"] = str(tmp / "home")
    ray.init(num_cpus=1, logging_level="ERROR", log_to_driver=False)
    actor = SchedulerClient.start(config, ledger_path=tmp / "actor" / "ledger.sqlite")
    token = admin_credential(config.name)
    shell = open_shell(config, tmp / "direct" / "ledger.sqlite", admin_digest=digest(token),
                       audit_key_path=tmp / "direct-keys" / "audit.key")
    committer = GroupCommit(shell.store)
    grouped = SchedulerClient(lambda route, wire_args, wait=True: committer.run(
        lambda: shell.door.call(token, route, wire_args)))
    single = SchedulerClient(lambda route, wire_args, wait=True: shell.door.call(token, route, wire_args))
    from elasticml.api.actor import start_api_server
    from elasticml.api.transport import HttpTransport

    url = start_api_server()
    over_http = []  # one credential a caller, as many operators or tenants would be (each has its own limit)
    for c in range(args.in_flight):
        file = actor.add_principal(f"bench-{c}", "admin", tmp / "creds" / f"bench-{c}")
        over_http.append(SchedulerClient(HttpTransport(url, file)))
    sides = {"actor": (actor, args.in_flight), "in_process": (grouped, args.in_flight), "one_at_a_time": (single, 1),
             "api": (over_http, args.in_flight)}
    for client, callers in sides.values():  # warm-up
        run_callers(client, 10**7, 64, callers)
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        row: dict[str, Any] = {"round": r}
        for k, (side, (client, callers)) in enumerate(sides.items()):
            got = run_callers(client, (r * len(sides) + k) * args.requests, args.requests, callers)
            row[side] = {**{key: v for key, v in got.items() if key != "lat"}, **stats(got["lat"])}
        row["actor_over_in_process_per_s"] = row["actor"]["per_s"] / row["in_process"]["per_s"]
        rounds.append(row)
        print(f"round {r}: " + " | ".join(
            f"{side} {row[side]['per_s']:6.0f} req/s p50 {row[side]['p50_ms']:6.2f} ms p99 {row[side]['p99_ms']:6.2f} ms"
            f" (queued {row[side]['queued']}, refused {row[side]['refused']})" for side in sides), flush=True)
    per_s = [r["actor"]["per_s"] for r in rounds]
    p99 = [r["actor"]["p99_ms"] for r in rounds]
    ratio = [r["actor_over_in_process_per_s"] for r in rounds]
    single_per_s = [r["one_at_a_time"]["per_s"] for r in rounds]
    api_per_s = [r["api"]["per_s"] for r in rounds]
    api_p99 = [r["api"]["p99_ms"] for r in rounds]
    summary = {
        "actor_per_s_median": statistics.median(per_s), "actor_per_s_range": [min(per_s), max(per_s)],
        "actor_p99_ms_median": statistics.median(p99), "actor_p99_ms_range": [min(p99), max(p99)],
        "actor_over_in_process_median": statistics.median(ratio), "ratio_range": [min(ratio), max(ratio)],
        "one_at_a_time_per_s_median": statistics.median(single_per_s),
        "api_per_s_median": statistics.median(api_per_s), "api_per_s_range": [min(api_per_s), max(api_per_s)],
        "api_p99_ms_median": statistics.median(api_p99), "api_goal_per_s": API_GOAL_PER_S,
        "api_goal_p99_ms": API_GOAL_P99_MS, "api_goals_met": statistics.median(api_per_s) >= API_GOAL_PER_S
        and statistics.median(api_p99) <= API_GOAL_P99_MS,
        "goal_per_s": GOAL_PER_S, "goal_p99_ms": GOAL_P99_MS,
        "per_s_goal_met": statistics.median(per_s) >= GOAL_PER_S, "p99_goal_met": statistics.median(p99) <= GOAL_P99_MS,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(["python", "benchmarks/scheduler_actor.py", *(argv or sys.argv[1:])]),
                                         "commit": commit_sha(), "date": time.strftime("%Y-%m-%d"),
                                         "cpus": os.cpu_count(), "in_flight": args.in_flight,
                                         "requests_per_round": args.requests, "rounds": rounds,
                                         "summary": summary}, indent=1) + "\n")
    actor.kill(no_restart=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
