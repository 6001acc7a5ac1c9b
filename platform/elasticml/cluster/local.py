"""A real Ray cluster on this machine, elastic through Ray's own autoscaler.

Who owns what: `LocalCluster` writes and reads one folder per cluster name
(`elasticml.home.cluster_dir`): `auth_token` (mode 0600, kept across up/down
so clients stay configured), `autoscaling.yaml` (the rendered config),
`state.json` (written last, atomically: a cluster is "up" exactly when it names
a live supervisor whose start time matches) and `head.log`. `up` also makes (once)
the checkpoint key of the config's `cluster_name` (`elasticml.checkpoint_key`) and
hands its path to the head, so to every node, job and replica, and to clients.

`up` starts `elasticml.cluster.supervisor`, which runs `ray start --head
--block` with the fake multi-node provider under autoscaler v2 (v1 ignores
label selectors). Demand for a label brings up a node of a type carrying it;
nodes idle for the config's `idle_timeout_minutes` are removed. `down` signals
the supervisor by PID, and the supervisor stops its whole tree; `down` then
kills, by PID and start time, anything of that tree still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import yaml

from elasticml import auth, home
from elasticml.atomic import write_atomic
import elasticml.cluster.spot_market as spot_market
from elasticml.checkpoint_key import KEY_ENV, make_cluster_key
from elasticml.cluster.config import (
    FAKE_HEAD_NODE_ID,
    ClusterSpec,
    render_local_autoscaling_config,
)
from elasticml.cluster.spot_market import MarketSettings
from elasticml.cluster.supervisor import kill_all
from elasticml.errors import (
    ClusterAlreadyRunning,
    ClusterError,
    ClusterNotRunning,
    HeadStartFailed,
)

STATE_FILE = "state.json"
START_TIMEOUT_S = 120.0


@dataclass(kw_only=True, frozen=True)
class ClusterInfo:
    """How to reach a running local cluster; persisted as state.json."""

    name: str
    pid: int
    """The supervisor's PID: the root of every process the cluster started."""
    create_time: float
    """The supervisor's start time, so a recycled PID is never mistaken for it."""
    gcs_address: str
    dashboard_url: str
    token_path: str
    config_path: str
    ray_temp_dir: str
    log_path: str
    started_at: float
    checkpoint_key_path: str = ""
    """The cluster's checkpoint key file (empty in the state of a cluster started before it had one)."""
    api_url: str = ""
    """The API server tenants reach the scheduler through (empty before it had one)."""

    def client_env(self) -> dict[str, str]:
        """What `ray job submit`, `serve deploy` and other clients need: the address, the token and
        the checkpoint key (a client verifies a checkpoint before it deploys it).

        `ray job submit` reads RAY_ADDRESS, `serve deploy|status` RAY_DASHBOARD_ADDRESS.
        """
        return {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_DASHBOARD_ADDRESS": self.dashboard_url,
            **auth.client_env(Path(self.token_path)),
            **({KEY_ENV: self.checkpoint_key_path} if self.checkpoint_key_path else {}),
        }

    def connect(self, **init_kwargs: Any) -> None:
        """Connect this process as a Ray driver, with the cluster's token (idempotent)."""
        import ray

        if ray.is_initialized():
            if ray.get_runtime_context().gcs_address == self.gcs_address:
                return
            ray.shutdown()
        auth.use_token_in_this_process(Path(self.token_path))
        if self.checkpoint_key_path:  # a driver loads and writes this cluster's checkpoints
            os.environ[KEY_ENV] = self.checkpoint_key_path
        init_kwargs.setdefault("logging_level", "ERROR")
        init_kwargs.setdefault("log_to_driver", False)
        ray.init(address=self.gcs_address, **init_kwargs)


def free_port() -> int:
    """A port free on every interface: Ray binds the node's address, not only loopback."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


class LocalCluster:
    """Start, find and stop one named local cluster."""

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self.dir = home.cluster_dir(name)

    # -- state -----------------------------------------------------------------
    def info(self) -> ClusterInfo | None:
        """The running cluster's info, or None when it is not up (stale state is cleared)."""
        path = self.dir / STATE_FILE
        try:
            info = ClusterInfo(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            raise ClusterError(
                f"{path} is not a cluster state file elasticml wrote; remove it and retry"
            ) from None
        if _process(info.pid, info.create_time) is None:
            path.unlink(missing_ok=True)
            return None
        return info

    def require_info(self) -> ClusterInfo:
        info = self.info()
        if info is None:
            raise ClusterNotRunning(self.name)
        return info

    # -- up --------------------------------------------------------------------
    def up(
        self,
        spec: ClusterSpec,
        *,
        port: int | None = None,
        dashboard_port: int | None = None,
        timeout_s: float = START_TIMEOUT_S,
        market: MarketSettings | None = None,
    ) -> ClusterInfo:
        """Start the head under a supervisor and wait until jobs can be submitted.

        `market`: replay a spot availability trace (`cluster.spot_market`): spot launches fail
        while it says unavailable, and running spot nodes get a notice and are taken away.

        A head that exits while starting is started once more (with fresh ports unless they were
        given): on a loaded machine Ray's own start-up can time out waiting for itself.
        """
        existing = self.info()
        if existing is not None:
            raise ClusterAlreadyRunning(self.name, existing.pid)
        try:
            return self._start(spec, port=port, dashboard_port=dashboard_port, timeout_s=timeout_s, market=market)
        except HeadStartFailed as first:
            print(f"elasticml: the Ray head exited while starting; trying once more ({str(first).splitlines()[0]})",
                  file=sys.stderr)
            return self._start(spec, port=port, dashboard_port=dashboard_port, timeout_s=timeout_s, market=market)

    def _start(self, spec: ClusterSpec, *, port: int | None, dashboard_port: int | None,
               timeout_s: float, market: MarketSettings | None) -> ClusterInfo:
        port, dashboard_port = _ports(port, dashboard_port)

        import ray._private.services as services

        host_ip = services.get_node_ip_address()
        gcs_address = f"{host_ip}:{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        token_path = auth.ensure_token(self.dir / "auth_token")
        key_path = make_cluster_key(spec.name)
        config_path = self.dir / "autoscaling.yaml"
        rendered = render_local_autoscaling_config(spec, gcs_address=gcs_address)
        from elasticml.cluster.provider import MODULE

        rendered["provider"]["module"] = MODULE  # the fake provider, a runtime-env folder per node
        market_file = spot_market.market_path(self.dir)
        market_file.unlink(missing_ok=True)
        spot_types = [t.name for t in spec.worker_types.values() if t.market == "spot"]
        if market is not None:
            if not spot_types:
                raise ClusterError(f"{spec.source} has no spot node type for the spot market to replay")
            spot_market.SpotMarket.create(market_file, market)
            rendered["provider"].update(spot_market.provider_overrides(market_file, spot_types))
        write_atomic(config_path, yaml.safe_dump(rendered))
        temp_dir = home.ray_temp_dir(self.name)
        shutil.rmtree(temp_dir, ignore_errors=True)  # old sessions of this name: logs only
        log_path = self.dir / "head.log"

        ray_cli = str(Path(sys.executable).with_name("ray"))
        cmd = [
            sys.executable, "-m", "elasticml.cluster.supervisor", "--",
            ray_cli, "start", "--head", "--block",
            f"--port={port}",
            f"--autoscaling-config={config_path}",
            f"--temp-dir={temp_dir}",
            "--num-cpus=0", "--num-gpus=0",  # the head coordinates; work goes to labelled workers
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            # Fixed defaults (10001, 52365) would collide between two clusters on one box. (Ray starts
            # its client server whenever ray[client] is installed; a port of 0 is refused.)
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ]
        env = _head_env(token_path, key_path)
        env["ELASTICML_CLUSTER_NAME"] = self.name  # jobs find their cluster's scheduler by it
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the CLI; Ctrl-C in the shell does not reach it
            )
        info = ClusterInfo(
            name=self.name,
            pid=proc.pid,
            create_time=psutil.Process(proc.pid).create_time(),
            gcs_address=gcs_address,
            dashboard_url=f"http://127.0.0.1:{dashboard_port}",
            token_path=str(token_path),
            config_path=str(config_path),
            ray_temp_dir=str(temp_dir),
            log_path=str(log_path),
            started_at=time.time(),
            checkpoint_key_path=str(key_path),
        )
        try:
            self._wait_ready(proc, info, timeout_s)
            info = replace(info, api_url=self._start_scheduler(spec, info, market_file if market is not None else None))
        except BaseException:
            _stop(info, timeout_s=30)
            raise
        write_atomic(self.dir / STATE_FILE, json.dumps(asdict(info), indent=2))
        return info

    def _start_scheduler(self, spec: ClusterSpec, info: ClusterInfo, market_file: Path | None) -> str:
        """The cluster's one scheduler actor (and a replayed market's driver) and its API server, created
        by `elasticml scheduler start` in its own driver process (so the caller's process does not become
        a Ray driver of this cluster); the API server's URL."""
        cli = [sys.executable, "-c", "import sys; from elasticml.cli import main; sys.exit(main())"]
        cmd = [*cli, "scheduler", "start", "--config", spec.source, "--address", info.gcs_address,
               "--ledger", str(home.home() / "scheduler" / self.name / "ledger.sqlite"), "--json"]
        if market_file is not None:
            cmd += ["--spot-market", str(market_file)]
        env = {**os.environ, **info.client_env()}
        env.pop("RAY_ADDRESS", None)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ClusterError(f"the scheduler did not start: {(out.stderr or out.stdout).strip()[-2000:]}")
        return str(json.loads(out.stdout.strip().splitlines()[-1]).get("api_url") or "")

    def _wait_ready(self, proc: subprocess.Popen[bytes], info: ClusterInfo, timeout_s: float) -> None:
        import httpx

        headers = auth.auth_headers(Path(info.token_path))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HeadStartFailed(
                    f"the Ray head exited with status {proc.returncode} while starting; "
                    f"last lines of {info.log_path}:\n{_tail(Path(info.log_path))}"
                )
            try:
                # The job API answers only once the dashboard and GCS are both up.
                r = httpx.get(f"{info.dashboard_url}/api/jobs/", headers=headers, timeout=2)
                if r.status_code == 200 and any(n.get("is_head_node") for n in _alive_nodes(info, timeout_s=5)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ClusterError(
            f"the Ray head did not become ready within {timeout_s:.0f}s; see {info.log_path}"
        )

    # -- down ------------------------------------------------------------------
    def down(self, *, timeout_s: float = 60) -> list[int]:
        """Stop every process this cluster started; returns their PIDs."""
        info = self.require_info()
        stopped = _stop(info, timeout_s=timeout_s)
        (self.dir / STATE_FILE).unlink(missing_ok=True)
        return stopped

    def processes(self) -> list[psutil.Process]:
        """The supervisor and all its descendants (empty when the cluster is down)."""
        info = self.info()
        if info is None:
            return []
        root = _process(info.pid, info.create_time)
        if root is None:
            return []
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    # -- status ----------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as the dashboard's state API reports them, labels included."""
        return _alive_nodes(self.require_info())

    def kill_node(self, node_id: str) -> list[int]:
        """Make a worker node vanish, as a reclaimed spot instance does: its raylet and every
        process under it, killed by PID. For chaos tests and the demo; returns the PIDs."""
        seen: list[str] = []
        for proc in self.processes():
            try:
                if proc.name() != "raylet":
                    continue
                args = proc.cmdline()
                seen += [arg.split("=", 1)[1] for arg in args if arg.startswith("--node_id=")]
                if node_id in " ".join(args):
                    victims = [*proc.children(recursive=True), proc]
                    # Frozen first, then killed: a vanished machine reports nothing, so no raylet may
                    # tell the GCS of its workers' deaths; Ray learns of the loss by missed health
                    # checks only. A process that exits on its own meanwhile must not abort the kill.
                    for sig in (signal.SIGSTOP, signal.SIGKILL):
                        for p in victims:
                            with contextlib.suppress(psutil.NoSuchProcess):
                                p.send_signal(sig)
                    return [p.pid for p in victims]
            except psutil.Error:  # a process that went away on its own is fine here
                continue
        raise ClusterError(f"no raylet of node {node_id} among cluster {self.name!r}'s processes "
                           f"(raylets of nodes {seen})")


def _alive_nodes(info: ClusterInfo, *, timeout_s: float = 10) -> list[dict[str, Any]]:
    import httpx

    r = httpx.get(
        f"{info.dashboard_url}/api/v0/nodes",
        params={"limit": 1000, "detail": "true"},
        headers=auth.auth_headers(Path(info.token_path)),
        timeout=timeout_s,
    )
    r.raise_for_status()
    return [n for n in r.json()["data"]["result"]["result"] if n.get("state") == "ALIVE"]


def _head_env(token_path: Path, key_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(auth.client_env(token_path))
    env.pop(auth.TOKEN_VAR, None)
    # Every node, job and replica inherits the head's environment: they all sign and check
    # checkpoints with the cluster's key, whatever key the caller's shell named.
    env[KEY_ENV] = str(key_path)
    # Jobs run `python ...`: make it this interpreter even when the venv is not activated.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "RAY_FAKE_CLUSTER": "1",
            "RAY_enable_autoscaler_v2": "1",
            # The fake provider knows the head by this id; Ray must use the same.
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    # One box, loopback: the autoscaler looks every second (as Ray's own autoscaling test cluster
    # does) and a node whose raylet is gone is known dead in about 5 s instead of 15; both cost
    # little here. The caller's environment wins.
    env.setdefault("AUTOSCALER_UPDATE_INTERVAL_S", "1")
    env.setdefault("RAY_health_check_period_ms", "1000")
    return env


def _stop(info: ClusterInfo, *, timeout_s: float) -> list[int]:
    root = _process(info.pid, info.create_time)
    if root is None:
        return []
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = [root]
    pids = [p.pid for p in tree]
    try:
        root.terminate()  # the supervisor stops its own tree
    except psutil.NoSuchProcess:
        pass
    _, alive = psutil.wait_procs([root], timeout=timeout_s)
    # Anything of the tree that outlived the supervisor (it was killed, or hung): by PID.
    kill_all([p for p in tree if p.is_running()], timeout_s=10)
    return pids


def _process(pid: int, create_time: float) -> psutil.Process | None:
    """The process with this PID if it is the one started at create_time and not a zombie."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def _ports(port: int | None, dashboard_port: int | None, attempts: int = 5) -> tuple[int, int]:
    """The GCS and dashboard ports: as given (refused when in use), or picked free. A picked port can be
    taken by another process before it is checked, so picking is tried again."""
    for attempt in range(attempts):
        chosen = (port or free_port(), dashboard_port or free_port())
        try:
            for p in chosen:
                _check_port_free(p)
            return chosen
        except ClusterError:
            if (port and dashboard_port) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            raise ClusterError(f"port {port} is in use; pick another with --port/--dashboard-port") from None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
