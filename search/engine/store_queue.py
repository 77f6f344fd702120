"""One thread for every storage call of a coordinator, so the dispatch loop never touches the database.

Why one thread: the loop's latency is what the workers wait for at a pruning decision, and a storage call
on the loop's thread costs more than its own query time. With SQLite, two threads of one process writing
at once make the second wait in SQLite's busy handler, which sleeps in steps of up to 100 ms (measured:
a 4 ms tell took 320 ms while the asking thread held the write lock), and Optuna's cached storage holds
one lock across each read. A single thread that asks, reports, tells and writes in submission order has
no such waits, and the order is the one the loop decided: a trial's reports before its tell, a tell
before the next ask (the sampler then sees it).

:class:`StoreQueue` wraps a one-thread ``ThreadPoolExecutor``. Before :meth:`start` (and in tests) every
job runs inline, synchronously, in the caller's thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class StoreQueue:
    """FIFO storage jobs on one thread; the first error a job raises is kept for the loop to raise.

    ``nice``: added to the store thread's nice value on Linux (0: the process's own). The coordinator lowers it so
    that CPU workers sharing the cores come first: its jobs are never what a worker waits for (trials are
    asked ahead, writes follow the results), while a worker pre-empted between two calls waits for them.
    Measured on this 2-core machine, 2 CPU workers, toy study (benchmarks/search_throughput.py, interleaved
    runs): the workers' idle share between calls fell from 1.75-2.37% to 1.25-1.65%; items scored per second
    were within the machine's noise."""

    def __init__(self, nice: int = 0) -> None:
        self.nice = nice
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._due: dict[str, float] = {}  # periodic job → when it may be submitted again
        self._queued: set[str] = set()  # periodic jobs submitted and not yet run
        self.cpu_s = 0.0  # CPU time of the jobs run on the store thread

    @property
    def threaded(self) -> bool:
        return self._pool is not None

    def start(self) -> None:
        """From now on jobs run on the store thread."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergesearch-store")
            self._pool.submit(self._remember_thread).result()

    def _remember_thread(self) -> None:
        self._thread = threading.current_thread()
        if self.nice and sys.platform.startswith("linux"):  # Linux sets a thread's nice value by its id
            try:
                tid = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
                )
            except OSError:  # a sandbox may forbid it: the thread runs at the process's priority
                pass

    def on_store_thread(self) -> bool:
        """True in the store thread (or anywhere while jobs run inline)."""
        return self._thread is None or threading.current_thread() is self._thread

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` after every job submitted before it; inline when not started."""
        if self._pool is None:
            fut: Future[Any] = Future()
            fut.set_result(fn(*args))  # an error raises here, in the caller
            return fut
        fut = self._pool.submit(self._timed, fn, args)
        fut.add_done_callback(self._keep_error)
        return fut

    def _timed(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.cpu_s += time.thread_time() - t0

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` after every job before it, waiting for its result (for the rare decision that
        must read the store, e.g. Hyperband's ``should_prune``)."""
        return self.submit(fn, *args).result()

    def every(self, name: str, period_s: float, fn: Callable[[], Any], force: bool = False) -> None:
        """Submit ``fn`` at most once per ``period_s`` (and never while the last one waits to run)."""
        now = time.monotonic()
        if name in self._queued or (not force and now < self._due.get(name, 0.0)):
            return
        self._due[name] = now + period_s
        self._queued.add(name)

        def job() -> Any:
            self._queued.discard(name)
            return fn()

        self.submit(job)

    def drain(self) -> None:
        """Wait until every job submitted so far has run."""
        if self._pool is not None:
            self._pool.submit(lambda: None).result()

    def close(self) -> None:
        """Run what is queued, then stop the thread; later jobs run inline again."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool, self._thread = None, None
        self._queued.clear()

    def _keep_error(self, fut: Future[Any]) -> None:
        err = fut.exception()
        if err is not None and self.error is None:
            self.error = err
