"""Stand-ins for what the API server asks of Ray's job API and of Serve, remembering what they were
asked: for tests of the server's own rules (the real ones run in test_scheduler_cluster.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Info:
    submission_id: str
    metadata: dict
    status: str = "RUNNING"
    message: str = ""


@dataclass
class FakeJobClient:
    """What the server uses of Ray's JobSubmissionClient, remembering what it was asked."""

    jobs: dict = field(default_factory=dict)
    submitted: list = field(default_factory=list)

    def submit_job(self, **kw):  # type: ignore[no-untyped-def]
        self.submitted.append(kw)
        self.jobs[kw["submission_id"]] = Info(kw["submission_id"], kw["metadata"])
        return kw["submission_id"]

    def get_job_info(self, job_id):  # type: ignore[no-untyped-def]
        if job_id not in self.jobs:
            raise RuntimeError("no such job")
        return self.jobs[job_id]

    def get_job_logs(self, job_id):  # type: ignore[no-untyped-def]
        return "step 3/6\\nconnected as eml1.acme.SeCrEt_token-123\\n"

    def stop_job(self, job_id):  # type: ignore[no-untyped-def]
        return True

    def list_jobs(self):  # type: ignore[no-untyped-def]
        return list(self.jobs.values())


@dataclass
class RecordingServe:
    """What the server asks of Serve, remembered; every app it ran is RUNNING."""

    ran: dict[str, tuple[Any, str]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def run(self, app: Any, *, name: str, route_prefix: str) -> None:
        self.ran[name] = (app, route_prefix)

    def delete(self, name: str) -> None:
        self.deleted.append(name)
        self.ran.pop(name, None)

    def status(self, name: str) -> str:
        return "RUNNING" if name in self.ran else "NOT_STARTED"


@dataclass
class Sched:
    token: str
    finished: list[str] = field(default_factory=list)

    def finish(self, name: str) -> None:
        self.finished.append(name)


def built(args: dict[str, Any], *, sched: Sched, attach: str) -> dict[str, Any]:
    """The build's inputs stand for the app: the test reads what it would have been built from."""
    return {"args": args, "as": sched.token, "attach": attach}
