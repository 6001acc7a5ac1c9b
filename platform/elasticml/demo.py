"""The guided tour: `elasticml demo` (the README's first command).

Stops, in order, each printed as it happens:
  1. build a byte-level Parquet corpus from Python's own sources;
  2. start the local elastic cluster from cluster_configs/local.yaml (token auth on);
  3. ask the cost-aware scheduler where the production endpoint (critical) and
     the training run (low priority, checkpointable) go, and why;
  4. as tenant `research`, with its own credential and no Ray token, submit a
     training job through the API server (which prints the dashboard's URL); the
     scheduler places it on the market it chooses (the autoscaler brings those
     nodes up); show its progress;
     a third of the way in, take one of its spot nodes away (every process of
     it, as a reclaimed instance) and watch Ray Train resume from the last checkpoint;
  5. show the nodes that came up, by market;
  6. deploy the completion Serve app from the run's checkpoint where the scheduler placed it;
  7. send HTTP requests and print the answers with their latency (and one bad request);
  8. the cost report: per workload and market, and the savings against all on-demand;
  9. shut everything down, by PID.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from elasticml import labels as L
from elasticml import progress
from elasticml.cluster import LocalCluster, load_cluster_spec
from elasticml.cluster.local import ClusterInfo, free_port
from elasticml.data.corpus import build_corpus
from elasticml.errors import DemoFailed
from elasticml.home import home
from elasticml.repo import default_cluster_config

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STEP = re.compile(r"step (\d+)/")
PROMPTS = ["def main(", "import os\nimport ", "class Config:\n    def __init__(self"]


def run_demo(*, steps: int = 240, clean: bool = False, say: Callable[[str], None] = progress.say,
             cluster_name: str = "demo") -> dict[str, object]:
    """Run the tour; returns what it measured (for tests and the closing note). Its data, checkpoint,
    ledger and audit trail stay for what the user tries next, unless `clean`."""
    t_start = time.monotonic()
    _quiet_ray_loggers()
    workdir = home() / "demo"
    # The corpus is a shared dataset every tenant's jobs may read; the run is tenant research's own
    # (under $ELASTICML_HOME/tenants/research, where the API server keeps a tenant's runs).
    corpus = home() / "datasets" / "demo-corpus"
    runs = home() / "tenants" / "research" / "runs" / "nightly-train"
    for old in (workdir, corpus, runs):
        shutil.rmtree(old, ignore_errors=True)
    # The tour starts from an empty ledger: its cost report covers this run only.
    shutil.rmtree(home() / "scheduler" / cluster_name, ignore_errors=True)
    results: dict[str, object] = {}

    say("== 1/9 data: a byte-level Parquet corpus from Python's standard library")
    manifest = build_corpus(corpus, num_shards=4, max_bytes=2_000_000)
    say(f"   {manifest.num_documents} documents, {manifest.num_bytes / 1e6:.1f} MB in {len(manifest.shards)} shards")

    say("== 2/9 cluster: the local elastic cluster from cluster_configs/local.yaml")
    spec = load_cluster_spec(default_cluster_config())
    cluster = LocalCluster(cluster_name)
    if cluster.info() is not None:
        cluster.down()
    info = cluster.up(spec)
    say(f"   head up (supervisor PID {info.pid}), dashboard {info.dashboard_url}, token auth on")
    say("   worker node types: " + ", ".join(f"{t.name} ({t.market}, max {t.max_workers})" for t in spec.worker_types.values()))
    try:
        sched, serve_market = _schedule(info, say, results)
        checkpoint = _train(info, cluster, sched, workdir, corpus, steps, say, results)
        results["checkpoint"] = str(checkpoint)
        _show_nodes(cluster, say)
        _serve(info, checkpoint, serve_market, say, results)
        _cost_report(sched, say, results)
    finally:
        say("== 9/9 shutdown")
        try:
            import ray

            # No serve.shutdown(): the whole cluster goes next, and Serve's
            # graceful shutdown only adds noise about actors being killed.
            if ray.is_initialized():
                ray.shutdown()
        finally:
            pids = cluster.down()
            say(f"   cluster down: {len(pids)} processes stopped")
            if clean:
                for made in (workdir, corpus, runs):
                    shutil.rmtree(made, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    say(f"demo finished in {results['wall_s']}s")
    if not clean:
        _what_next(corpus, home() / "scheduler" / cluster_name, str(results.get("checkpoint", "")),
                   info.checkpoint_key_path, say)
    return results


def _what_next(corpus: Path, ledger_dir: Path, checkpoint: str, key: str, say: Callable[[str], None]) -> None:
    say("what it left, to explore next (`elasticml demo --clean` leaves nothing):")
    say(f"   corpus      {corpus}")
    say(f"   checkpoint  {checkpoint}")
    say(f"   ledger      {ledger_dir / 'ledger.sqlite'}   audit trail {ledger_dir / 'audit.jsonl'}")
    say("try:")
    say(f"   elasticml cost report --ledger {ledger_dir / 'ledger.sqlite'}")
    say(f"   elasticml audit show --ledger {ledger_dir / 'ledger.sqlite'}")
    # Every local cluster of this machine signs with this key; a shell names it to check or serve one.
    say(f"   export ELASTICML_CHECKPOINT_KEY_PATH={key}")
    say(f"   elasticml checkpoint verify {checkpoint}")
    say("   elasticml cluster up   # then serve the checkpoint:")
    say(f"   serve run serve_apps.completion:app checkpoint={checkpoint} market=on-demand")


def _quiet_ray_loggers() -> None:
    """Ray's INFO/WARNING chatter (packaging, Serve start-up) would drown the tour."""
    import ray  # noqa: F401  (creates Ray's loggers, which set their own levels)
    import ray.serve  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "ray" or name.startswith("ray."):
            logging.getLogger(name).setLevel(logging.ERROR)


def _schedule(info: ClusterInfo, say: Callable[[str], None], results: dict[str, object]):
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

    say("== 3/9 scheduler: where each workload goes, and why")
    info.connect()
    sched = SchedulerClient.connect()
    endpoint = sched.place(WorkloadSpec(name="completion-endpoint", tenant="product", kind="serving",
                                        priority="critical", min_workers=1, max_workers=1, expected_hours=24))
    where = ", ".join(f"{a.workers}x {a.node_type}" for a in endpoint.allocations)
    say(f"   {endpoint.workload}: {endpoint.state} -> {where} (${endpoint.hourly_cost:.4f}/h)")
    say(f"      why: {endpoint.reason}")
    say("   nightly-train (tenant research, low priority) asks for itself when its job starts (next stop)")
    results["placements"] = {"serving": endpoint.market}
    return sched, endpoint.market


def _cost_report(sched, say: Callable[[str], None], results: dict[str, object]) -> None:
    say("== 8/9 cost report (ledger of every allocation interval)")
    report = sched.cost_report()
    for r in report["workload"]:
        say(f"   {r['key']:<22} ${r['cost']:.6f}  (all on-demand: ${r['on_demand_cost']:.6f})")
    t = report["total"]
    say(f"   total ${t['cost']:.6f}, saved {t['savings_pct']:.0f}% against running everything on on-demand")
    results["savings_pct"] = round(t["savings_pct"], 1)


def _train(info: ClusterInfo, cluster: LocalCluster, sched, workdir: Path, corpus: Path, steps: int,
           say: Callable[[str], None], results: dict[str, object]) -> str:
    from ray.job_submission import JobStatus

    from elasticml.api.transport import HttpTransport

    say("== 4/9 training: tenant research submits jobs/train.py through the API server with its own credential "
        "(no Ray token); the scheduler places and steers it")
    credential = workdir / "research.cred"
    sched.add_principal("research", "tenant", credential)  # the operator (admin) gives the tenant its credential
    research = HttpTransport(info.api_url, credential)
    config = {"data": str(corpus), "run_name": "nightly-train",
              "steps": steps, "num_workers": 2, "global_batch": 16, "report_every": max(1, steps // 8),
              "checkpoint_every": max(1, steps // 4)}
    job = research.post("jobs/submit", {"config": config, "priority": "low", "expected_hours": 0.05})
    job_id = job["submission_id"]
    say(f"   submitted {job_id} as tenant research to {info.api_url}/v1/jobs/submit")
    say(f"   its dashboard: {info.api_url}/  (sign in with the credential in {credential})")
    results["dashboard_url"] = f"{info.api_url}/"
    client = _JobsOverHttp(research)
    t0 = time.monotonic()
    take_node_at = f"step {max(1, steps // 8) * 3}/"
    with progress.bar("training", total=steps, unit="step") as shown:
        status = _follow(client, job_id, cluster, sched, say, results, shown, take_node_at, t0)
    sched.clear_interruption("cpu_spot")  # the tour's spot loss is over
    results["train_s"] = round(time.monotonic() - t0, 1)
    logs = client.get_job_logs(job_id)
    summary = next((json.loads(l) for l in reversed(logs.splitlines()) if l.startswith('{"event": "train_done"')), None)
    if status != JobStatus.SUCCEEDED or not summary or not summary.get("checkpoint"):
        raise DemoFailed(f"training job {job_id} ended {status}; its log ends:\n" + "\n".join(logs.splitlines()[-30:]))
    results["final_loss"] = summary["metrics"]["loss"]
    results["resumed"] = any("resumed from step" in l for l in logs.splitlines())
    say(f"   job {status} in {results['train_s']}s; loss {summary['metrics']['loss']:.3f}; checkpoint {summary['checkpoint']}")
    return str(summary["checkpoint"])


class _JobsOverHttp:
    """A job's status and logs as the tenant reads them: through the API server."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def get_job_status(self, job_id: str) -> str:
        return str(self.transport.post("jobs/status", {"submission_id": job_id})["status"])

    def get_job_logs(self, job_id: str) -> str:
        return str(self.transport.post("jobs/logs", {"submission_id": job_id})["logs"])


def _follow(client, job_id: str, cluster: LocalCluster, sched, say: Callable[[str], None],
            results: dict[str, object], shown, take_node_at: str, t0: float):
    """Print the job's progress, its placement and its moves, and take a spot node away on cue, until
    the job ends; its final status."""
    from ray.job_submission import JobStatus

    shown_lines, seen_nodes, said_lines = 0, set(), set()
    node_taken = move_shown = False
    while True:
        status = client.get_job_status(job_id)
        for node in cluster.nodes():
            market = L.market_of(node.get("labels", {}))
            if market and node["node_id"] not in seen_nodes:
                seen_nodes.add(node["node_id"])
                say(f"   [autoscaler] +{market} node {node['node_id'][-5:]} at {time.monotonic() - t0:.0f}s")
        lines = client.get_job_logs(job_id).splitlines()
        for line in lines[shown_lines:]:
            line = ANSI.sub("", line)
            text = line.split(")", 1)[-1].strip() if line.startswith("(") else line.strip()
            # Ray can echo a worker's line more than once; each is shown once.
            if text.startswith(("step ", "resumed")) and text not in said_lines:
                said_lines.add(text)
                say(f"   {text}")
                if m := STEP.match(text):
                    shown.update(max(0, int(m.group(1)) - shown.n))
            elif text.startswith(('{"event": "placement"', '{"event": "moved"', '{"event": "retry"')) \
                    and text not in said_lines:
                said_lines.add(text)
                _say_placement(json.loads(text), say, results)
        shown_lines = len(lines)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if not node_taken and any(take_node_at in l for l in lines):
            node_taken = True
            lost = _take_a_spot_node_away(cluster)
            if lost:
                say(f"   [chaos] spot node {lost[-5:]} taken away (its raylet and every process on it)")
                results["node_lost_at_s"] = round(time.monotonic() - t0, 1)
        if node_taken and not move_shown:
            # The scheduler saw the spot node die and moved the job off the pool: the job follows.
            moved = [d for d in sched.explain("research/nightly-train") if d["action"] == "move"]
            if moved:
                move_shown = True
                say(f"   [scheduler] {moved[-1]['reason']}")
        time.sleep(1)

def _say_placement(event: dict[str, object], say: Callable[[str], None], results: dict[str, object]) -> None:
    """The job's own placement and each move it followed, as its driver printed them."""
    if event["event"] == "placement" and event.get("state") == "placed":
        results.setdefault("placements", {}).setdefault("training", event["market"])  # type: ignore[attr-defined]  # results["placements"] is the dict made here
        say(f"   [scheduler] nightly-train: placed -> {event['workers']}x {event['node_type']} "
            f"(${event['hourly_cost']:.4f}/h)")
        say(f"      why: {event['reason']}")
    elif event["event"] == "moved":  # the move came first: the run checkpointed and stopped to follow it
        results["moved_to"] = event["to"]
        say(f"   [scheduler] nightly-train checkpointed at step {event['checkpoint_step']} and follows its move "
            f"to {event['to']}")
    elif event["event"] == "retry" and event.get("state") == "placed":  # the loss came first: it follows the move
        results["moved_to"] = event["to"]
        say(f"   [scheduler] nightly-train lost workers with the node and follows its move to {event['to']}, "
            "resuming from its last checkpoint")


def _take_a_spot_node_away(cluster: LocalCluster) -> str | None:
    """Kill one spot node's whole process tree, as a reclaimed spot instance vanishes; its node id."""
    spot = [n["node_id"] for n in cluster.nodes() if L.market_of(n.get("labels", {})) == "spot"]
    if not spot:
        return None
    cluster.kill_node(spot[0])
    return spot[0]


def _show_nodes(cluster: LocalCluster, say: Callable[[str], None]) -> None:
    say("== 5/9 cluster status: nodes by market")
    for node in cluster.nodes():
        node_labels = node.get("labels", {})
        kind = "head" if node.get("is_head_node") else node_labels.get(L.NODE_TYPE, "?")
        say(f"   {node['node_id'][-5:]}  {kind:<16} {L.market_of(node_labels) or '-'}")


def _serve(info: ClusterInfo, checkpoint: str, market: str, say: Callable[[str], None],
           results: dict[str, object]) -> None:
    import httpx
    from ray import serve

    from elasticml.serve.completion import build_app

    say(f"== 6/9 serving: the completion app from the checkpoint, one int8 replica on {market} capacity")
    info.connect()
    port = free_port()
    t0 = time.monotonic()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"checkpoint": checkpoint, "market": market}), name="completion", route_prefix="/")
    results["serve_ready_s"] = round(time.monotonic() - t0, 1)
    say(f"   ready at http://127.0.0.1:{port}/v1/completions in {results['serve_ready_s']}s")

    say("== 7/9 requests over HTTP")
    latencies = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for i, prompt in enumerate(PROMPTS):
            t = time.perf_counter()
            # Greedy first; then sampled (seeded, so the tour is repeatable).
            body = {"prompt": prompt, "max_tokens": 40, "temperature": 0.0 if i == 0 else 0.7, "seed": i}
            r = http.post("/v1/completions", json=body)
            ms = (time.perf_counter() - t) * 1e3
            if r.status_code != 200:
                raise DemoFailed(f"completion request failed with {r.status_code}: {r.text}")
            latencies.append(ms)
            say(f"   {prompt!r} -> {r.json()['completion']!r}  ({ms:.0f} ms)")
        t = time.perf_counter()
        again = http.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 40, "temperature": 0.0})
        say(f"   the first prompt again: cached={again.json()['cached']} ({(time.perf_counter() - t) * 1e3:.0f} ms)")
        score = http.post("/v1/score", json={"context": "def ", "continuation": "main():"}).json()
        say(f"   /v1/score 'def ' -> 'main():': {score['nll_per_byte']:.2f} nats/byte")
        bad = http.post("/v1/completions", json={"prompt": "", "max_tokens": 5000})
        say(f"   a bad request gets {bad.status_code}: {bad.json()['detail'][0]['msg']}")
        results["bad_request_status"] = bad.status_code
        results["cache_hit"] = again.json()["cached"]
    results["latency_ms"] = [round(x, 1) for x in latencies]
