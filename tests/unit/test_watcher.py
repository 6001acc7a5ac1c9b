"""The interruption watcher against an IMDSv2 server on loopback: notices, slow and dead metadata."""

from __future__ import annotations

import httpx
import pytest

from elasticml.provision.watcher import Notice, Watcher


@pytest.fixture
def imds(fake_imds):
    return fake_imds


def make(server, seen, timeout_s=1.0):
    return Watcher(on_notice=seen.append, imds_url=f"http://127.0.0.1:{server.server_port}", timeout_s=timeout_s)


def test_no_notice_then_an_interruption_is_reported_once(imds):
    server, state = imds
    seen: list[Notice] = []
    w = make(server, seen)
    assert w.poll_once() is None and seen == []
    state["docs"]["/latest/meta-data/spot/instance-action"] = {"action": "terminate", "time": "2026-11-24T12:00:00Z"}
    n = w.poll_once()
    assert n == Notice(kind="interruption", action="terminate", time="2026-11-24T12:00:00Z") and seen == [n]
    assert w.poll_once() is None and len(seen) == 1  # the same notice is not reported twice
    assert state["tokens"] == 1  # the session token is reused


def test_rebalance_recommendation_is_reported(imds):
    server, state = imds
    seen: list[Notice] = []
    state["docs"]["/latest/meta-data/events/recommendations/rebalance"] = {"noticeTime": "2026-11-24T11:50:00Z"}
    assert make(server, seen).poll_once().kind == "rebalance"


def test_slow_metadata_times_out_and_the_loop_keeps_going(imds):
    server, state = imds
    state["delay"] = 0.5
    seen: list[Notice] = []
    w = make(server, seen, timeout_s=0.2)
    with pytest.raises(httpx.TimeoutException):
        w.poll_once()
    rounds = iter(range(3))
    w.run(interval_s=0.01, max_backoff_s=0.02, stop=lambda: next(rounds, None) is None)
    assert w.errors == 3 and seen == []
    state["delay"] = 0.0
    state["docs"]["/latest/meta-data/spot/instance-action"] = {"action": "stop", "time": "t"}
    assert w.poll_once().action == "stop"  # recovers once the service answers


def test_metadata_service_down_is_survived():
    seen: list[Notice] = []
    w = Watcher(on_notice=seen.append, imds_url="http://127.0.0.1:9", timeout_s=0.2)  # nothing listens on port 9
    rounds = iter(range(2))
    w.run(interval_s=0.01, max_backoff_s=0.01, stop=lambda: next(rounds, None) is None)
    assert w.errors == 2 and seen == []
