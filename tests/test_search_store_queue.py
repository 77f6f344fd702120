"""search.engine.store_queue: the one thread that runs a coordinator's storage calls, in submission order."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from search.engine.store_queue import StoreQueue


def test_before_start_jobs_run_inline_and_raise_in_the_caller():
    q = StoreQueue()
    seen: list[str] = []
    fut = q.submit(lambda: seen.append(threading.current_thread().name) or 7)
    assert fut.result() == 7 and seen == [threading.current_thread().name]
    with pytest.raises(ZeroDivisionError):
        q.submit(lambda: 1 / 0)
    assert q.error is None  # the caller saw it; nothing is left for a loop to raise


def test_jobs_run_on_one_thread_in_submission_order():
    q = StoreQueue()
    q.start()
    order: list[int] = []
    threads: set[str] = set()

    def job(i: int) -> None:
        if i % 7 == 0:
            time.sleep(0.002)  # a slow job does not let a later one overtake it
        order.append(i)
        threads.add(threading.current_thread().name)

    for i in range(200):
        q.submit(job, i)
    assert q.call(lambda: len(order)) == 200  # call waits for everything submitted before it
    q.close()
    assert order == list(range(200))
    assert len(threads) == 1 and threads.pop().startswith("mergesearch-store")
    assert q.submit(threading.current_thread).result() is threading.current_thread()  # inline again


def test_the_first_error_is_kept_and_later_jobs_still_run():
    q = StoreQueue()
    q.start()
    done: list[int] = []
    q.submit(lambda: 1 / 0)
    q.submit(lambda: {}["missing"])
    q.submit(done.append, 1)
    q.drain()
    q.close()
    assert isinstance(q.error, ZeroDivisionError) and done == [1]


def test_periodic_jobs_are_not_submitted_again_while_queued_or_before_their_period():
    q = StoreQueue()
    q.start()
    gate = threading.Event()
    runs: list[str] = []
    q.submit(gate.wait)  # holds the thread: the periodic job stays queued
    for _ in range(5):
        q.every("tally", 0.0, lambda: runs.append("tally"))
    gate.set()
    q.drain()
    assert runs == ["tally"]  # five requests while it waited: one run
    q.every("tally", 60.0, lambda: runs.append("tally"))  # period 0 has passed: runs, next due in 60 s
    q.every("tally", 60.0, lambda: runs.append("tally"))
    q.drain()
    assert runs == ["tally", "tally"]
    q.every("tally", 60.0, lambda: runs.append("forced"), force=True)
    q.close()
    assert runs == ["tally", "tally", "forced"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_the_store_thread_yields_the_cpu_and_the_callers_thread_keeps_its_priority():
    q = StoreQueue(nice=7)
    q.start()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    store = q.call(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    q.close()
    assert store == min(19, base + 7)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
