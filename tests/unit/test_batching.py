"""The replica's batcher: batches form when the model is free, a request waits for company only where some is
expected, tenants take turns, the gone are dropped."""

from __future__ import annotations

import asyncio

import pytest

from elasticml.serve.batching import Batcher


class GatedModel:
    """A model whose batches finish only when the test opens the gate: the test decides what overlaps."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        await self.gate.wait()
        if "poison" in items:
            raise RuntimeError("the model failed")
        return [i.upper() for i in items]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def run(coro):
    async def guarded():
        async with asyncio.timeout(30):  # a hang fails the test instead of the run
            return await coro
    return asyncio.run(guarded())


def test_a_lone_request_runs_at_once_and_what_queues_meanwhile_is_the_next_batch():
    async def scenario():
        model = GatedModel()
        batcher = Batcher(model, max_batch_size=8, wait_s=0)
        first = asyncio.create_task(batcher.submit("a"))
        await model.started.wait()
        later = [asyncio.create_task(batcher.submit(x)) for x in "bcde"]
        await settle()
        assert model.batches == [["a"]]  # the others wait for the model, not in batches of their own
        model.gate.set()
        assert await first == "A" and await asyncio.gather(*later) == ["B", "C", "D", "E"]
        return model.batches

    assert run(scenario()) == [["a"], ["b", "c", "d", "e"]]


def test_batches_hold_at_most_max_batch_size_and_a_full_batch_does_not_wait():
    async def scenario():
        model = GatedModel()
        model.gate.set()
        batcher = Batcher(model, max_batch_size=3, wait_s=3600)  # a wait no test could sit out
        return await asyncio.gather(*(batcher.submit(x) for x in "abcdef")), model.batches

    results, batches = run(scenario())
    assert results == list("ABCDEF") and batches == [["a", "b", "c"], ["d", "e", "f"]]


class Clocked:
    """A model that answers at once and notes, per batch, the loop time it was called at."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[str]]] = []

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append((asyncio.get_running_loop().time(), list(items)))
        return [i.upper() for i in items]


def test_a_request_that_finds_nothing_in_flight_runs_without_waiting_for_company():
    async def scenario():
        model = Clocked()
        batcher = Batcher(model, max_batch_size=8, wait_s=5.0)
        submitted = asyncio.get_running_loop().time()
        assert await batcher.submit("a") == "A"
        return model.batches[0][0] - submitted

    # Far inside the wait: held for company, it would have run 5 s after it was submitted.
    assert run(scenario()) < 0.5


def test_after_a_batch_of_several_the_first_to_come_back_waits_for_the_others():
    async def scenario():
        model = Clocked()
        batcher = Batcher(model, max_batch_size=2, wait_s=5.0)  # batches fill, so none sits out the wait
        assert await asyncio.gather(batcher.submit("a"), batcher.submit("b")) == ["A", "B"]
        first = asyncio.create_task(batcher.submit("x"))  # nothing queued or running: the model is free
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit("y"))
        await asyncio.gather(first, second)
        return [items for _, items in model.batches]

    # Not [x] then [y]: a closed loop of clients would split into two batches in turn.
    assert run(scenario()) == [["a", "b"], ["x", "y"]]


def test_where_company_is_expected_a_request_waits_up_to_the_wait_and_no_longer():
    async def scenario():
        model = Clocked()
        wait_s = 0.5
        batcher = Batcher(model, max_batch_size=2, wait_s=wait_s)
        await asyncio.gather(batcher.submit("a"), batcher.submit("b"))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.submit("x")  # the last batch held two, so x waits; nobody comes
        t1 = loop.time()
        await batcher.submit("y")  # the last batch held x alone: y runs at once
        (_, _), (ran_x, _), (ran_y, _) = model.batches
        return ran_x - t0, ran_y - t1, wait_s

    waited_x, waited_y, wait_s = run(scenario())
    assert wait_s * 0.9 <= waited_x < wait_s + 1.0 and waited_y < wait_s / 2


def test_requests_on_their_way_in_are_company_worth_waiting_for():
    async def scenario():
        model = Clocked()
        on_the_way = 1  # say, a request whose body the ingress is still reading
        batcher = Batcher(model, max_batch_size=2, wait_s=5.0, arriving=lambda: on_the_way)
        first = asyncio.create_task(batcher.submit("x"))
        await asyncio.sleep(0.05)
        assert model.batches == []  # held: someone is on the way
        on_the_way = 0
        await asyncio.gather(first, batcher.submit("y"))
        return [items for _, items in model.batches]

    assert run(scenario()) == [["x", "y"]]


def test_what_queued_behind_a_batch_longer_than_the_wait_runs_as_one_batch_at_once():
    async def scenario():
        model = GatedModel()
        loop = asyncio.get_running_loop()
        batcher = Batcher(model, max_batch_size=8, wait_s=0.2)
        first = asyncio.create_task(batcher.submit("a"))
        await model.started.wait()
        later = [asyncio.create_task(batcher.submit(x)) for x in "bc"]
        await asyncio.sleep(0.3)  # b and c have waited longer than the wait when the model frees
        opened = loop.time()
        model.gate.set()
        await asyncio.gather(first, *later)
        return model.batches, loop.time() - opened

    batches, took = run(scenario())
    assert batches == [["a"], ["b", "c"]] and took < 0.2  # not a further wait from when the model freed


def test_tenants_take_turns_so_a_flood_cannot_keep_another_out_of_the_next_batch():
    async def scenario():
        model = GatedModel()
        batcher = Batcher(model, max_batch_size=4, wait_s=0)
        running = asyncio.create_task(batcher.submit("a0", tenant="A"))
        await model.started.wait()
        flood = [asyncio.create_task(batcher.submit(f"a{i}", tenant="A")) for i in range(1, 11)]
        await settle()
        polite = asyncio.create_task(batcher.submit("b1", tenant="B"))  # arrives after all ten of A's
        await settle()
        model.gate.set()
        await asyncio.gather(running, polite, *flood)
        return model.batches

    batches = run(scenario())
    assert batches[1] == ["a1", "b1", "a2", "a3"]  # B's one request is in the very next batch
    assert [x for b in batches[2:] for x in b] == [f"a{i}" for i in range(4, 11)]  # A's stay in order


def test_a_request_whose_caller_left_is_dropped_before_it_runs_and_counted():
    async def scenario():
        model = GatedModel()
        batcher = Batcher(model, max_batch_size=8, wait_s=0)
        running = asyncio.create_task(batcher.submit("a"))
        await model.started.wait()
        gone = asyncio.create_task(batcher.submit("gone"))
        kept = asyncio.create_task(batcher.submit("kept"))
        await settle()
        gone.cancel()
        await settle()
        model.gate.set()
        assert await running == "A" and await kept == "KEPT"
        with pytest.raises(asyncio.CancelledError):
            await gone
        return model.batches, batcher.dropped

    batches, dropped = run(scenario())
    assert batches == [["a"], ["kept"]] and dropped == 1


def test_a_failing_batch_fails_its_own_requests_and_the_next_batch_runs():
    async def scenario():
        model = GatedModel()
        batcher = Batcher(model, max_batch_size=2, wait_s=0)
        model.gate.set()
        bad = await asyncio.gather(batcher.submit("poison"), batcher.submit("x"), return_exceptions=True)
        good = await batcher.submit("y")
        return bad, good

    bad, good = run(scenario())
    assert all(isinstance(e, RuntimeError) for e in bad) and good == "Y"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Batcher(GatedModel(), max_batch_size=0, wait_s=0)
    with pytest.raises(ValueError):
        Batcher(GatedModel(), max_batch_size=4, wait_s=float("nan"))
