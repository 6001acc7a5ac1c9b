"""The scheduler actor: one named, detached Ray actor per cluster, a thin shell around the store,
the scheduler's commands, its controller and the door.

Who owns what: the store (store.py) owns the state, `Scheduler` (core.py) the commands, the
`Controller` the steering, the `Door` who may call what. This shell puts them together on the
head node and feeds them what Ray says (ray_signals.py): nodes that died, launches the
autoscaler cannot make, live prices, which node types each workload's workers are on. Ray
restarts the actor if it dies (`max_restarts=-1`); a new incarnation reads everything from
the store. The actor is asynchronous: Ray hands it up to 256 calls at once, each waits on
its future while every command and controller tick runs on one committer thread
(group_commit.py), in order, so they never race, and the commands that queued together
share one commit and its fsyncs.

Ray lets anyone holding the cluster's token call any method of any actor, `__ray_call__`
included (a public developer API in Ray 2.60 that runs any closure inside the actor): a token
holder is trusted whatever the door checks, so tenants get credentials, never the token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import ray

from elasticml.cluster.config import ClusterSpec
from elasticml.scheduler.settings import ControllerConfig

log = logging.getLogger(__name__)

ACTOR_NAME = "elasticml-scheduler"
NAMESPACE = "elasticml"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=256)  # type: ignore[call-overload]  # Ray's overloads omit actor-only options (max_concurrency)
class SchedulerActor:
    """The named, detached actor on the head node. Its own methods: `ping` (the cluster's name,
    nothing else), `call` (every request, through the authenticating `Door`) and `poll` (the
    controller's ticks, with a secret only the actor's own poll thread knows)."""

    def __init__(self, cluster: ClusterSpec, ledger_path: str, controller: ControllerConfig, admin_digest: str,
                 audit_key_path: str) -> None:
        import secrets

        from elasticml.scheduler.group_commit import GroupCommit
        from elasticml.scheduler.ray_signals import RaySignals, session
        from elasticml.scheduler.ray_view import attachable
        from elasticml.scheduler.shell import open_shell

        self.shell = open_shell(cluster, ledger_path, controller, admin_digest=admin_digest,
                                audit_key_path=audit_key_path, incarnation=session(), live=True,
                                attach_check=attachable)
        self.signals = RaySignals(self.shell)
        self.shell.door.tick = self.signals.tick
        self.committer = GroupCommit(self.shell.store)
        self._poll_secret = secrets.token_hex(32)
        # The controller and node watching go through the actor's own queue, so they never race a command.
        me = ray.get_runtime_context().current_actor
        threading.Thread(target=_poll_forever, args=(me, self._poll_secret, controller.tick_seconds), daemon=True,
                         name="controller").start()

    async def ping(self) -> str:
        return self.shell.scheduler.cluster.name

    async def call(self, token: Any, route: Any, args: Any) -> Any:
        return await asyncio.wrap_future(self.committer.submit(lambda: self.shell.door.call(token, route, args)))

    async def poll(self, secret: Any) -> list[dict[str, Any]]:
        import hmac

        if type(secret) is not str or not hmac.compare_digest(secret, self._poll_secret):
            raise PermissionError("poll is the actor's own")
        seen = await asyncio.get_running_loop().run_in_executor(None, self.signals.look)

        def tick() -> list[dict[str, Any]]:
            self.shell.door.flush_refusals()
            return self.signals.tick(seen)

        return await asyncio.wrap_future(self.committer.submit(tick))


def _poll_forever(handle: Any, secret: str, period_s: float) -> None:
    while True:
        time.sleep(period_s)
        try:
            ray.get(handle.poll.remote(secret))
        except ray.exceptions.RayActorError:  # the actor is restarting or gone: its next incarnation polls again
            return
        except Exception:  # noqa: BLE001 - one bad tick must not stop the controller: say why, and look again
            log.exception("the scheduler's controller tick failed; it looks again")
