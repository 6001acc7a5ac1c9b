"""Placements per second through the scheduler actor's door and the API server, with the audit trail, and their latency.

    python benchmarks/scheduler_actor.py [--requests 2000] [--in-flight 8] [--rounds 3] [--json OUT]

What ships, side by side in one run, the four sides interleaved over `--rounds` rounds:
- actor: `--in-flight` callers' place/finish requests through the named actor (credential
  checked, request rebuilt, audited, group-committed: one trail append and one SQLite commit,
  each fsynced, per batch), a Ray round trip each;
- in-process: the same callers through the same door and group commit on the same kind of
  store, without Ray (the ratio actor / in-process is Ray's share);
- one at a time: one caller through the door in process (a commit and a trail fsync each);
- api: the same callers over HTTP on loopback through the API server (an actor on the head,
  default rate limits on: 200 requests/s a credential), each caller with its own credential.
Every request is a placement or a finish. Each side's answers are counted by what they were:
placements granted, queued (or paused), refused (by reason) and finishes. Two rates, never mixed:
answers/s (every placement and finish answered, whatever the verdict: the door's load) and granted
placements/s (only placements that were granted: what the goal counts). Latency is per request,
from submit to answer, over all answers and apart for placements and finishes. Raw results, round
by round: benchmarks/results/scheduler_actor.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray


import record  # benchmarks/record.py: a script's own folder is first on sys.path

from elasticml.cluster.config import load_cluster_spec  # noqa: E402
from elasticml.errors import PlacementRefused  # noqa: E402
from elasticml.repo import CLUSTER_CONFIGS  # noqa: E402
from elasticml.scheduler.client import SchedulerClient  # noqa: E402
from elasticml.scheduler.group_commit import GroupCommit  # noqa: E402
from elasticml.scheduler.identity import admin_credential, digest  # noqa: E402
from elasticml.scheduler.shell import open_shell  # noqa: E402
from elasticml.scheduler.spec import WorkloadSpec  # noqa: E402

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
    given a list): latencies, and every answer counted by what it was."""
    clients = client if isinstance(client, list) else [client] * callers
    place_lat: list[float] = []
    finish_lat: list[float] = []
    states: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    lock = threading.Lock()
    per = n // callers

    def caller(c: int) -> None:
        client = clients[c]
        places, finishes = [], []
        seen: Counter[str] = Counter()
        why: Counter[str] = Counter()
        for k in range(per):
            i = first + c * per + k
            t = time.perf_counter()
            try:
                seen[client.place(workload(i)).state] += 1
            except PlacementRefused as e:
                why[e.reason] += 1
            places.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.finish(f"w{i}")
            finishes.append(time.perf_counter() - t)
        with lock:
            place_lat.extend(places)
            finish_lat.extend(finishes)
            states.update(seen)
            refused.update(why)

    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    answers = len(place_lat) + len(finish_lat)
    return {"placements_asked": len(place_lat), "granted": states["placed"], "queued": states["queued"],
            "paused": states["paused"], "refused": sum(refused.values()), "refused_by_reason": dict(refused),
            "finishes": len(finish_lat), "answers": answers, "wall_s": wall, "answers_per_s": answers / wall,
            "granted_per_s": states["placed"] / wall, "place_lat": place_lat, "finish_lat": finish_lat}


def stats(lat: list[float], prefix: str = "") -> dict[str, float]:
    q = statistics.quantiles(lat, n=100)
    return {f"{prefix}p50_ms": q[49] * 1e3, f"{prefix}p99_ms": q[98] * 1e3}


def side_row(got: dict[str, Any]) -> dict[str, Any]:
    """One side's round as recorded: the counts and rates, and latency quantiles instead of every latency."""
    row = {key: v for key, v in got.items() if not key.endswith("_lat")}
    return {**row, **stats(got["place_lat"] + got["finish_lat"]), **stats(got["place_lat"], "place_"),
            **stats(got["finish_lat"], "finish_")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="placements per side per round (each also finished)")
    p.add_argument("--in-flight", type=int, default=8, help="concurrent callers (Little: 2,000/s at 4 ms is 8 in flight)")
    p.add_argument("--rounds", type=int, default=3)
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    run = record.start(__file__, args, argv)
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
            row[side] = side_row(run_callers(client, (r * len(sides) + k) * args.requests, args.requests, callers))
        row["actor_over_in_process_answers_per_s"] = row["actor"]["answers_per_s"] / row["in_process"]["answers_per_s"]
        rounds.append(row)
        print(f"round {r}: " + " | ".join(
            f"{side} {row[side]['answers_per_s']:6.0f} answers/s, {row[side]['granted_per_s']:6.0f} granted placements/s,"
            f" p50 {row[side]['p50_ms']:6.2f} ms p99 {row[side]['p99_ms']:6.2f} ms (granted {row[side]['granted']},"
            f" queued {row[side]['queued']}, paused {row[side]['paused']}, refused {row[side]['refused']}"
            f"{' ' + str(row[side]['refused_by_reason']) if row[side]['refused'] else ''},"
            f" finishes {row[side]['finishes']})" for side in sides), flush=True)

    def over(side: str, key: str) -> dict[str, float]:
        return record.spread([r[side][key] for r in rounds])

    summary: dict[str, Any] = {
        side: {"answers_per_s": over(side, "answers_per_s"), "granted_per_s": over(side, "granted_per_s"),
               "p50_ms": over(side, "p50_ms"), "p99_ms": over(side, "p99_ms"),
               **{key: sum(r[side][key] for r in rounds) for key in
                  ("placements_asked", "granted", "queued", "paused", "refused", "finishes")},
               "refused_by_reason": dict(sum((Counter(r[side]["refused_by_reason"]) for r in rounds), Counter()))}
        for side in sides}
    summary["actor_over_in_process_answers_per_s"] = record.spread([r["actor_over_in_process_answers_per_s"] for r in rounds])
    # The goals count placements: a refusal, a queued placement or a finish is an answer, not a placement.
    actor_granted, api_granted = summary["actor"]["granted_per_s"]["median"], summary["api"]["granted_per_s"]["median"]
    summary["goals"] = {
        "actor": {"granted_per_s": GOAL_PER_S, "p99_ms": GOAL_P99_MS, "granted_per_s_met": actor_granted >= GOAL_PER_S,
                  "p99_met": summary["actor"]["p99_ms"]["median"] <= GOAL_P99_MS},
        "api": {"granted_per_s": API_GOAL_PER_S, "p99_ms": API_GOAL_P99_MS,
                "granted_per_s_met": api_granted >= API_GOAL_PER_S,
                "p99_met": summary["api"]["p99_ms"]["median"] <= API_GOAL_P99_MS},
    }
    print(json.dumps(summary, indent=1))
    run.write(samples=rounds, summary=summary, in_flight=args.in_flight, requests_per_round=args.requests)
    actor.kill(no_restart=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
