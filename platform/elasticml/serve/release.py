"""`elasticml release`: a gated candidate goes through the canary router, then is promoted or rolled back.

1. The candidate comes from an `elasticml optimize` report (its chosen candidate, or one named; a
   candidate the gate stopped is refused here, with the gate's reasons) or is a checkpoint plus a
   precision.
2. Serve application APP becomes a canary release (elasticml.serve.canary): the version serving now
   and the candidate side by side, the candidate in its own precision, taking `canary_share` of the
   traffic.
3. The router judges on its own after `evaluate_after` canary requests (held-out loss, latency). At
   `timeout_s` the release asks it to judge on what it has seen; still no verdict means too little
   traffic to tell, and the candidate is rolled back.
4. Promoted: the candidate becomes APP's stable version and the old version's deployment is torn
   down. Rolled back: the candidate's deployment is torn down. A promotion whose deployment fails
   is rolled back the same way.

No request is turned away on the way: between releases APP is its stable version behind the
router (`build_release_app`), the router is reconfigured in place, and each model version keeps
its deployment, named by what it serves, from canary to stable. Only the first release of an app
deployed as a plain completion app changes its ingress, and requests get 503 until the router's
first replica is up.

The release record, `$ELASTICML_HOME/releases/APP.json` (written atomically after every step),
holds what APP serves now and every release's steps. What it serves is the next release's base, and
`releases/APP.yaml` is a `serve deploy` file of it, so nobody edits YAML after a promotion. Each
step also goes into the cluster's audit trail when the cluster has a scheduler.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

from elasticml.dataconf import check_choice, check_number, check_text
from elasticml.errors import ConfigError
from elasticml.home import home

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20
KEEP_RELEASES = 50
APP_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


@dataclass(kw_only=True, frozen=True)
class Candidate:
    checkpoint: str
    precision: str
    name: str = ""
    """Its name in the optimize report, when it came from one."""
    gate: dict[str, Any] | None = None
    """The gate's numbers and verdict from that report."""

    def __post_init__(self) -> None:
        from elasticml.serve.config import Precision

        check_text(self.checkpoint, field="checkpoint", max_len=4096)
        check_choice(self.precision, get_args(Precision), field="precision")


@dataclass(kw_only=True, frozen=True)
class ReleaseConfig:
    candidate: Candidate
    app: str = "completion"
    """The Serve application the release replaces."""
    route_prefix: str | None = None
    """Its route; default: the record's, else "/"."""
    base: dict[str, Any] | None = None
    """ServeConfig fields of the version serving now, for the first release of APP; later releases
    take the record's (what the last promotion left serving)."""
    holdout_texts: tuple[str, ...] = ()
    holdout_file: str | None = None
    canary_share: float = 0.1
    evaluate_after: int = 50
    max_nll_increase: float = 0.01
    max_latency_ratio: float = 1.5
    min_latency_samples: int = 20
    timeout_s: float = 600.0
    poll_s: float = 1.0
    records: str | None = None
    """Folder of release records; default $ELASTICML_HOME/releases."""

    def __post_init__(self) -> None:
        check_text(self.app, field="app", max_len=63, pattern=APP_NAME)
        if self.route_prefix is not None:
            check_text(self.route_prefix, field="route_prefix", max_len=200, pattern=r"/[A-Za-z0-9_./-]*")
        if self.base is not None and not isinstance(self.base, dict):
            raise ConfigError(f"must be a mapping of ServeConfig fields, got {type(self.base).__name__}", field="base")
        if not (self.holdout_texts or self.holdout_file):
            raise ConfigError("the canary judges the candidate on held-out text: give holdout_file or holdout_texts",
                              field="holdout_file")
        check_number(self.canary_share, field="canary_share", lo=0.01, hi=1.0)
        check_number(self.evaluate_after, field="evaluate_after", lo=0, hi=1_000_000, integer=True)
        check_number(self.max_nll_increase, field="max_nll_increase", lo=0.0, hi=10.0)
        check_number(self.max_latency_ratio, field="max_latency_ratio", lo=1.0, hi=100.0)
        check_number(self.min_latency_samples, field="min_latency_samples", lo=1, hi=100_000, integer=True)
        check_number(self.timeout_s, field="timeout_s", lo=1.0, hi=7 * 86400.0)
        check_number(self.poll_s, field="poll_s", lo=0.05, hi=60.0)

    def records_dir(self) -> Path:
        return record_path(self.app, self.records).parent


# -- the candidate ----------------------------------------------------------------
def _read_bounded(path: Path, what: str) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_FILE_BYTES} bytes", field=what)
    return path.read_text()


def _read_json(path: Path, what: str) -> Any:
    text = _read_bounded(path, what)
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not JSON: {exc}", field=what) from None


def candidate_from_report(report_path: str | Path, name: str | None = None) -> Candidate:
    """The report's chosen candidate, or the one named; refused, with the gate's reasons, when the
    gate stopped it or stopped them all."""
    from elasticml.optimize.pipeline import REPORT

    path = Path(report_path).expanduser()
    path = path / REPORT if path.is_dir() else path
    report = _read_json(path, "report")
    if not isinstance(report, dict) or not isinstance(report.get("candidates"), list):
        raise ConfigError(f"{path} is not an `elasticml optimize` report (no candidates)", field="report")
    rows: dict[str, dict[str, Any]] = {c["name"]: c for c in report["candidates"] if isinstance(c, dict) and isinstance(c.get("name"), str)}
    wanted = name if name is not None else report.get("chosen")
    if wanted is None:
        why = "; ".join(f"{n}: {', '.join(c.get('reasons', []))}" for n, c in rows.items())[:1500]
        raise ConfigError(f"the gate passed no candidate in {path}, so there is nothing to release ({why})",
                          field="report")
    if wanted not in rows:
        raise ConfigError(f"no candidate {wanted!r} in {path}; it has {', '.join(sorted(rows)) or 'none'}",
                          field="candidate")
    row = rows[wanted]
    if row.get("passed") is not True:
        raise ConfigError(f"the gate stopped {wanted}: {'; '.join(map(str, row.get('reasons', [])))[:1500]}",
                          field="candidate")
    gate: dict[str, Any] = {k: row.get(k) for k in ("loss", "loss_ratio", "speedup", "size_ratio", "tokens_per_s") if k in row}
    return Candidate(checkpoint=row.get("checkpoint"), precision=row.get("precision"),  # type: ignore[arg-type]  # __post_init__ refuses a missing one
                     name=wanted, gate=gate)


def read_base(path: str | Path, app: str) -> tuple[dict[str, Any], str | None]:
    """ServeConfig fields (and the route) of APP from a `serve deploy` file, or a YAML mapping of the fields."""
    from elasticml.yamlio import load_yaml

    file = Path(path).expanduser()
    try:
        doc = load_yaml(file, source=str(file), max_bytes=MAX_FILE_BYTES, agree_with_yaml11=True)  # serve deploy too
    except ConfigError as exc:
        raise ConfigError(str(exc), field="base") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{file} must hold a mapping", field="base")
    if "applications" not in doc:
        return doc, None
    apps = doc["applications"]
    found = [a for a in apps if isinstance(a, dict) and a.get("name") == app] if isinstance(apps, list) else []
    if not found:
        raise ConfigError(f"{file} has no application named {app!r}", field="app")
    args = found[0].get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"application {app!r} in {file}: args must be a mapping", field="base")
    return args, found[0].get("route_prefix")


# -- the record -------------------------------------------------------------------
def record_path(app: str, records: str | None = None) -> Path:
    """APP's release record, in `records` (default $ELASTICML_HOME/releases)."""
    return (Path(records).expanduser() if records else home() / "releases") / f"{app}.json"


def load_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    record = _read_json(path, "record")
    if not (isinstance(record, dict) and isinstance(record.get("serving"), dict)
            and isinstance(record.get("releases"), list)):
        raise ConfigError(f"{path} is not a release record", field="record")
    return record


def _save(path: Path, record: dict[str, Any]) -> None:
    from elasticml.atomic import write_atomic
    from elasticml.yamlio import dump_yaml

    record["releases"] = record["releases"][-KEEP_RELEASES:]
    # 0600: what an app serves may carry its tenants' key digests
    write_atomic(path, json.dumps(record, indent=2), mode=0o600)
    deploy_file = {"applications": [{"name": record["app"], "route_prefix": record["route_prefix"],
                                     "import_path": "elasticml.serve.canary:build_release_app",
                                     "args": record["serving"]}]}
    write_atomic(path.with_suffix(".yaml"),
                 f"# What Serve application {record['app']} serves after its last release "
                 f"(elasticml release); `serve deploy` this file to bring it back.\n"
                 + dump_yaml(deploy_file, sort_keys=False), mode=0o600)  # read_base reads it back


# -- the release ------------------------------------------------------------------
def _audit(action: str, app: str, why: str) -> None:
    from elasticml.serve.audit import scheduler_or_none

    sched = scheduler_or_none()
    if sched is None:
        return
    try:
        sched.record_event(action, app, why[:2000])
    except Exception as exc:  # the record file stands alone; the trail is the cluster's extra copy
        log.warning("release step not audited: %s: %s", type(exc).__name__, str(exc)[:200])


def _deploy(builder: Callable[[dict[str, Any]], Any], args: dict[str, Any], app: str, route_prefix: str) -> None:
    from ray import serve

    serve.run(builder(args), name=app, route_prefix=route_prefix)


def _wait_for_verdict(cfg: ReleaseConfig, say: Callable[[str], None]) -> dict[str, Any]:
    from ray import serve

    router = serve.get_deployment_handle("CanaryRouter", app_name=cfg.app)
    deadline = time.monotonic() + cfg.timeout_s
    seen = -1
    while True:
        state: dict[str, Any] = router.verdict.remote().result(timeout_s=120)
        if state["state"] != "running":
            return state
        if state["requests"]["canary"] != seen:
            seen = state["requests"]["canary"]
            say(f"canary: {state['requests']['canary']} requests, stable: {state['requests']['stable']}")
        if time.monotonic() >= deadline:
            break
        time.sleep(cfg.poll_s)
    state = router.judge_now.remote().result(timeout_s=600)
    if state["state"] == "running":
        state = {**state, "state": "rolled_back",
                 "reason": f"no verdict after {cfg.timeout_s:g}s: {state['reason']}"}
    return state


def release(cfg: ReleaseConfig, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Take `cfg.candidate` through a canary release of APP; returns this release's entry of the record.

    Needs a driver connected to the cluster (ray.init) with Serve on it. One release of an app at a
    time: a second one while the first runs is refused (a lock file next to the record)."""
    import fcntl
    import os

    folder = cfg.records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{cfg.app}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise ConfigError(f"a release of {cfg.app} is in progress ({lock.read().strip() or 'another process'}); "
                              "wait for its verdict", field="app") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        return _release(cfg, say)


def _release(cfg: ReleaseConfig, say: Callable[[str], None]) -> dict[str, Any]:
    from elasticml.serve.canary import build_canary_app, build_release_app
    from elasticml.train.checkpoint import resolve_checkpoint
    from elasticml.serve.config import ServeConfig

    path = record_path(cfg.app, cfg.records)
    record = load_record(path)
    if record is None:
        if cfg.base is None:
            raise ConfigError(f"the first release of {cfg.app} needs its current version: pass --base (the app's "
                              f"`serve deploy` file or its args)", field="base")
        record = {"app": cfg.app, "route_prefix": cfg.route_prefix or "/", "serving": dict(cfg.base), "releases": []}
    route_prefix = cfg.route_prefix or record["route_prefix"]
    serving = dict(record["serving"])
    if "checkpoint" not in serving:
        raise ConfigError("the current version names no checkpoint", field="base")
    serving["checkpoint"] = resolve_checkpoint(str(serving["checkpoint"]))  # the same one all through
    ServeConfig.from_dict(serving, source="the current version")  # refused here, before Serve is touched
    candidate_ckpt = resolve_checkpoint(cfg.candidate.checkpoint)
    for earlier in record["releases"]:
        if earlier.get("outcome") is None:
            earlier["outcome"] = "interrupted"  # its canary app is replaced below; what serves is unchanged

    entry: dict[str, Any] = {
        "id": uuid.uuid4().hex[:12], "started_at": time.time(), "outcome": None,
        "base": {"checkpoint": serving["checkpoint"], "precision": serving.get("precision", "auto")},
        "candidate": {**asdict(cfg.candidate), "checkpoint": candidate_ckpt}, "steps": [],
    }
    record["releases"].append(entry)
    record["route_prefix"] = route_prefix

    def step(name: str, detail: str) -> None:
        entry["steps"].append({"at": time.time(), "step": name, "detail": detail})
        _save(path, record)
        _audit(f"release {name}", cfg.app, f"{detail} (release {entry['id']})")
        say(f"{name}: {detail}")

    if cfg.candidate.gate is not None:
        step("gated", f"{cfg.candidate.name} passed the gate: {json.dumps(cfg.candidate.gate)[:500]}")
    verdict_uri = str(cfg.records_dir() / f"{cfg.app}.{entry['id']}.verdict.json")
    canary_args = {**serving, "canary_checkpoint": candidate_ckpt, "canary_precision": cfg.candidate.precision,
                   "canary_share": cfg.canary_share, "holdout_texts": list(cfg.holdout_texts),
                   "holdout_file": cfg.holdout_file, "evaluate_after": cfg.evaluate_after,
                   "max_nll_increase": cfg.max_nll_increase, "max_latency_ratio": cfg.max_latency_ratio,
                   "min_latency_samples": cfg.min_latency_samples, "verdict_uri": verdict_uri}
    try:
        _deploy(build_canary_app, canary_args, cfg.app, route_prefix)
        step("canary", f"{candidate_ckpt} ({cfg.candidate.precision}) takes {cfg.canary_share:.0%} of {cfg.app}'s "
                       f"traffic next to {serving['checkpoint']} ({serving.get('precision', 'auto')})")
        verdict = _wait_for_verdict(cfg, say)
    except ConfigError:  # a bad setting of the candidate's, refused while the app was built: nothing deployed
        entry["outcome"] = "refused"
        _save(path, record)
        raise
    except Exception as exc:  # the candidate did not come up, or its router did not answer
        verdict = {"state": "rolled_back", "reason": f"the canary failed: {type(exc).__name__}: {str(exc)[:500]}"}
    entry["verdict"] = {k: verdict.get(k) for k in ("state", "reason", "requests", "held_out_nll_per_byte",
                                                     "p50_ms_per_token")}
    def roll_back() -> dict[str, Any]:
        _deploy(build_release_app, serving, cfg.app, route_prefix)
        entry["outcome"] = "rolled_back"
        step("rolled back", f"{cfg.app} serves {serving['checkpoint']} alone; the candidate is torn down")
        return entry

    if verdict["state"] != "promoted":
        step("judged", f"roll back: {verdict['reason']}")
        return roll_back()
    step("judged", f"promote: {verdict['reason']}")
    promoted = {**serving, "checkpoint": candidate_ckpt, "precision": cfg.candidate.precision}
    try:
        _deploy(build_release_app, promoted, cfg.app, route_prefix)
    except Exception as exc:
        step("promotion failed", f"{type(exc).__name__}: {str(exc)[:500]}")
        return roll_back()
    record["serving"] = promoted
    entry["outcome"] = "promoted"
    step("promoted", f"{cfg.app} serves {candidate_ckpt} ({cfg.candidate.precision}); the old version is torn down")
    return entry


__all__ = ["Candidate", "ReleaseConfig", "candidate_from_report", "load_record", "read_base", "record_path",
           "release"]
