"""The interruption watcher against an IMDSv2 server on loopback: notices, slow and dead metadata."""

from __future__ import annotations

import json
import time

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


ACTION = "/latest/meta-data/spot/instance-action"


def test_a_slow_drip_is_cut_at_the_poll_rounds_deadline_not_per_read(imds):
    server, state = imds
    body = json.dumps({"action": "terminate", "time": "2026-12-01T12:00:00Z"}).encode()
    state["raw"] = {ACTION: {"data": body, "drip_s": 0.05}}  # each read is quick (0.05 s < the 0.5 s limit)
    seen: list[Notice] = []
    w = make(server, seen, timeout_s=0.5)
    with pytest.raises(httpx.TimeoutException):
        w.poll_once()
    assert seen == []
    deadline = time.monotonic() + 10  # the fake stops dripping once its writes fail
    while time.monotonic() < deadline and state["sent"][ACTION] < len(body):
        before = state["sent"][ACTION]
        time.sleep(0.3)
        if state["sent"][ACTION] == before:
            break
    assert state["sent"][ACTION] < len(body)  # the watcher hung up before the whole drip: the deadline held


@pytest.mark.parametrize("data", [b"[1, 2, 3]", b'"terminate"', b"null", b"{not json", b"\xff\xfe",
                                  b'{"action": "explode", "time": "t"}', b'{"action": "stop", "time": 5}',
                                  b'{"action": "stop"}'], ids=["list", "string", "null", "broken", "binary",
                                                               "unknown-action", "time-not-text", "no-time"])
def test_a_lying_metadata_service_is_logged_and_skipped(imds, data):
    server, state = imds
    state["raw"] = {ACTION: {"data": data}}
    seen: list[Notice] = []
    w = make(server, seen)
    assert w.poll_once() is None and seen == [] and w.skipped == 1


def test_an_oversized_body_is_refused(imds):
    server, state = imds
    state["raw"] = {ACTION: {"data": b'{"action": "stop", "time": "' + b"x" * 100_000 + b'"}'}}
    with pytest.raises(ValueError, match="more than"):
        make(server, []).poll_once()


def test_a_service_that_dies_mid_answer_is_survived(imds):
    server, state = imds
    state["raw"] = {ACTION: {"data": b'{"action": "st', "dies": True}}
    seen: list[Notice] = []
    w = make(server, seen)
    rounds = iter(range(2))
    w.run(interval_s=0.01, max_backoff_s=0.01, stop=lambda: next(rounds, None) is None)
    assert w.errors == 2 and seen == []
    state["raw"] = {}
    state["docs"][ACTION] = {"action": "terminate", "time": "t1"}
    assert w.poll_once().action == "terminate"


def test_a_notice_the_scheduler_did_not_take_is_delivered_again(imds):
    server, state = imds
    state["docs"][ACTION] = {"action": "terminate", "time": "t1"}
    delivered: list[Notice] = []
    attempts = []

    def flaky(notice: Notice) -> None:
        attempts.append(notice)
        if len(attempts) < 3:
            raise RuntimeError("the scheduler is restarting")
        delivered.append(notice)

    w = Watcher(on_notice=flaky, imds_url=f"http://127.0.0.1:{server.server_port}", timeout_s=1.0)
    rounds = iter(range(5))
    w.run(interval_s=0.01, max_backoff_s=0.01, stop=lambda: next(rounds, None) is None)
    assert len(attempts) == 3 and len(delivered) == 1 and w.errors == 2  # retried until taken, then once only
