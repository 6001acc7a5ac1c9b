"""Group commit: commands from many callers share the fsyncs that make them durable.

Every command and controller tick runs on one committer thread, in order. The committer takes
whatever has queued while it was busy as one batch: each command in its own savepoint (a
failure undoes that command alone), then one append to the audit trail and one SQLite commit
for the batch, and only then are the callers answered. So no caller hears back before its
command and its audit records are on disk, and under load the two fsyncs are paid once per
batch rather than once per command. A lone caller waits for no one: a batch is what queued
during the last commit, never a timer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

from elasticml.scheduler.store import Store

T = TypeVar("T")
MAX_BATCH = 256
"""Commands one batch takes at most (a bound on how long the first of them waits for its answer)."""


class GroupCommit:
    def __init__(self, store: Store, *, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self.batches = 0
        self.commands = 0
        threading.Thread(target=self._forever, daemon=True, name="group-commit").start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """`fn()` on the committer thread; the future is resolved once its batch is durable."""
        done: Future[Any] = Future()
        self._queue.put((fn, done))
        return done

    def run(self, fn: Callable[[], T]) -> T:
        """`submit(fn)`, waited for (its exception re-raised)."""
        return self.submit(fn).result()

    def _forever(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self.max_batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # A caller that gave up (its call cancelled) is dropped before its command runs.
            items = [(fn, done) for fn, done in items if done.set_running_or_notify_cancel()]
            try:
                self._commit(items)
            except BaseException as exc:  # never lose the committer: every caller of the batch hears why
                for _, done in items:
                    _answer(done, False, exc)

    def _commit(self, items: list[tuple[Callable[[], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], bool, Any]] = []
        try:
            with self.store.batch():
                for fn, done in items:
                    try:
                        outcomes.append((done, True, fn()))
                    except Exception as exc:  # the caller's own failure: its savepoint is undone, the rest go on
                        outcomes.append((done, False, exc))
        except BaseException as exc:  # the batch itself did not commit: nobody's command is durable
            for _, done in items:
                _answer(done, False, exc)
            return
        self.batches += 1
        self.commands += len(items)
        for done, ok, value in outcomes:
            _answer(done, ok, value)


def _answer(done: Future[Any], ok: bool, value: Any) -> None:
    try:
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)
    except InvalidStateError:  # answered already (the batch failed after its commands ran)
        pass
