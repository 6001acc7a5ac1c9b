"""Dynamic batching that forms a batch when the model is free, taking tenants in turn.

Serve's `@serve.batch` forms the next batch while the previous one still runs, from what arrives
within `batch_wait_s` of its first request, and queues the formed batches: under steady traffic
that arrives spread out (not in bursts) batches stay at one or two requests however many wait,
and the replica runs at its unbatched rate. Here a batch is formed only when the model is free,
from everything queued by then (up to `max_batch_size`): the longer a batch runs, the larger the
next one.

Waiting for company (adaptive): when the model is free and requests are queued, the batch waits
for more (until it is full, at most `wait_s` from its oldest request's arrival) only if company is
expected:
- another request is queued (so traffic is concurrent: more may be a moment behind it);
- requests are on their way in (`arriving`, the owner's count of requests in the replica that have
  not reached the batcher yet, e.g. whose body is still being read);
- the previous batch held more than one request: its clients, if they send again at once, come
  back together, and the first of them must not run alone while the rest queue behind it (a closed
  loop of fewer clients than `max_batch_size` would otherwise settle into a batch of one and a
  batch of the rest, in turn, the model busy twice for each round of answers).
Otherwise the request runs at once: a lone request (one client, or sparse traffic) pays nothing for
batching. Where it does wait, a request waits at most `wait_s` from its own arrival, never more
because a batch ran meanwhile; after a burst the first lone request may still wait once, as the
last batch's size speaks for clients that may not return. Under steady load the wait hardly
applies: when a batch ends, what queued while it ran has mostly waited `wait_s` already (a batch
runs longer than the wait).

Fair queuing: each tenant has its own queue and a batch takes one request from each tenant in turn,
so a tenant under its share gets into the next batch however much another has queued (with the
replica's per-tenant limit, which refuses a tenant's excess at once, this bounds its wait by the
batch running when it arrives plus its own).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], *, max_batch_size: int, wait_s: float,
                 arriving: Callable[[], int] | None = None) -> None:
        """`run`: the model on a batch, one result per item in order. `wait_s`: the longest a request
        waits for company, only where company is expected. `arriving`: how many requests are on their
        way to `submit` (in the owner's hands, not queued here yet); None = nothing comes but by submit."""
        if max_batch_size < 1 or not wait_s >= 0:
            raise ValueError("max_batch_size must be >= 1 and wait_s >= 0")
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.arriving = arriving
        self._last_size = 0
        """Requests in the batch that ran last: more than one says that its clients may be coming back."""
        self._queues: OrderedDict[Hashable, deque[tuple[T, asyncio.Future[R], float]]] = OrderedDict()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.dropped = 0
        """Requests whose caller went away (timed out, disconnected) before a batch took them."""

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def submit(self, item: T, tenant: Hashable = None) -> R:
        """`item`'s result once a batch holding it has run; cancelling the caller drops it if still queued."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():  # started on the loop that serves the requests
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._work())
        future: asyncio.Future[R] = loop.create_future()
        self._queues.setdefault(tenant, deque()).append((item, future, time.monotonic()))
        assert self._arrived is not None
        self._arrived.set()
        return await future

    def _drop_cancelled(self) -> None:
        for tenant in list(self._queues):
            queue = self._queues[tenant]
            while queue and queue[0][1].done():
                queue.popleft()
                self.dropped += 1
            if not queue:
                del self._queues[tenant]

    def _company_expected(self) -> bool:
        """Whether a batch about to form should wait for more (see the module's docstring)."""
        if self.queued > 1 or self._last_size > 1:
            return True
        return self.arriving is not None and self.arriving() > 0

    def _take(self) -> list[tuple[T, asyncio.Future[R], float]]:
        """Up to max_batch_size live requests, one per tenant in turn; the next batch starts with the
        tenant after the last one served."""
        batch: list[tuple[T, asyncio.Future[R], float]] = []
        while len(batch) < self.max_batch_size and self._queues:
            tenant, queue = next(iter(self._queues.items()))
            entry = queue.popleft()
            if entry[1].done():
                self.dropped += 1
            else:
                batch.append(entry)
            self._queues.move_to_end(tenant)
            if not queue:
                del self._queues[tenant]
        return batch

    async def _work(self) -> None:
        assert self._arrived is not None
        while True:
            self._drop_cancelled()
            if not self._queues:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            oldest = min(q[0][2] for q in self._queues.values())
            while self._company_expected() and self.queued < self.max_batch_size and \
                    (left := oldest + self.wait_s - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    async with asyncio.timeout(left):
                        await self._arrived.wait()
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            self._last_size = len(batch)
            try:
                results = await self.run([item for item, _, _ in batch])
            except Exception as exc:  # the model's failure is the batch's; the batcher goes on
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


__all__ = ["Batcher"]
