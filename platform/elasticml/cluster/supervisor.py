"""The process that owns a local cluster: `python -m elasticml.cluster.supervisor -- CMD...`.

It runs the Ray head (`ray start --head --block ...`) as its child and marks
itself a *child subreaper* (Linux `prctl(PR_SET_CHILD_SUBREAPER)`), so every
process the cluster ever starts — the head's daemons, the worker nodes Ray's
autoscaler launches, their workers — stays in this process's tree even when
its own parent exits. `elasticml cluster down` therefore stops exactly what
`up` started by signalling this one PID: on SIGTERM the supervisor sends
SIGTERM to every descendant, waits, SIGKILLs what is left, and exits.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = float(os.environ.get("ELASTICML_STOP_GRACE_S", "5"))


def _become_subreaper() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def stop_tree(root: psutil.Process, grace_s: float) -> None:
    """SIGTERM every descendant of root, then SIGKILL the survivors after grace_s."""
    procs = root.children(recursive=True)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    # Orphans adopted while we waited are children now: take them too.
    alive += [p for p in root.children(recursive=True) if p not in alive]
    kill_all(alive, timeout_s=5)


def kill_all(procs: list[psutil.Process], *, timeout_s: float) -> None:
    """SIGKILL each of procs still there, then wait up to timeout_s for them to go."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)


def _reap_orphans(child: subprocess.Popen[bytes]) -> None:
    """Reap adopted orphans that exited, so they do not linger as zombies."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child.pid:  # the head itself: keep its exit status for main()
            child.returncode = os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--":
        print("usage: python -m elasticml.cluster.supervisor -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    _become_subreaper()
    child = subprocess.Popen(argv[1:])
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    me = psutil.Process()
    while not stopping and child.poll() is None:
        time.sleep(0.2)
        _reap_orphans(child)
    stop_tree(me, GRACE_S)
    return 0 if stopping else (child.returncode or 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
