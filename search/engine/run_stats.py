"""The run's statistics: worker time, idle gaps, waits and skipped calls, the loop's CPU; the summary.

Thread: :class:`RunStats` belongs to the loop thread (the coordinator's dispatch loop), which counts every
call as its result comes back. The store thread's own CPU counters live with what it runs
(``StoreQueue.cpu_s``, ``StudyLedger.optuna_cpu_s``); :func:`summarize` reads them once both threads are
done, into one :class:`RunSummary`.

Idle time is measured on the worker's own clock: the gap between the end of a worker's call and the start
of its next one, so a late coordinator shows there whatever the clocks of the two processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass
class RunSummary:
    """What one ``run`` did (this coordinator's share) and the study's state at the end."""

    study_name: str
    finished_here: int
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    stop_reason: str
    wall_s: float
    loop_s: float = 0.0  # from the first dispatch to the last result (wall_s minus Ray and model start-up)
    worker_busy_s: float = 0.0  # sum over calls of their time on the worker
    worker_idle_s: float = 0.0  # sum over workers of the gaps between consecutive calls (worker clock)
    worker_cpu_s: float = 0.0  # sum over calls of their CPU time on the worker (busy minus pre-emption)
    # calls sent to a worker that had nothing queued (it waited for a decision or a trial)
    worker_waits: int = 0
    skipped_calls: int = 0  # calls queued on a gate's verdict that returned unrun (search.engine.gate)
    loop_cpu_s: float = 0.0  # CPU time of the coordinator process (every thread) during the loop
    store_cpu_s: float = 0.0  # of which the store thread's jobs (asks, tells, writes, reads)
    dispatch_cpu_s: float = 0.0  # of which the loop's own thread (results, decisions, dispatch)
    optuna_cpu_s: float = 0.0  # of the store thread's: Optuna's ask and sampler, report and tell


class RunStats:
    """Counters of the loop thread: every call's time on its worker, the gaps between a worker's calls,
    the calls sent to a waiting worker and the calls that returned unrun; the loop's wall and CPU time."""

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.idle_s = 0.0
        self.worker_cpu_s = 0.0
        self.waits = 0
        self.skipped = 0
        self.loop_s = 0.0
        self.loop_cpu_s = 0.0
        self.dispatch_cpu_s = 0.0
        self._loop0: tuple[float, float, float] | None = None

    def call_ended(self, last_end: float | None, res: dict[str, Any]) -> None:
        """A call's result ``res`` (``t_start``, ``t_end`` and ``cpu_s`` on the worker) came back; its worker's
        previous call ended at ``last_end`` (None: its first call)."""
        if last_end is not None:
            self.idle_s += max(0.0, res["t_start"] - last_end)
        self.busy_s += res["t_end"] - res["t_start"]
        self.worker_cpu_s += res.get("cpu_s", 0.0)
        if res.get("skipped"):
            self.skipped += 1

    def loop_started(self) -> None:
        """The dispatch loop begins (on its own thread: ``dispatch_cpu_s`` is that thread's CPU time)."""
        self._loop0 = (time.perf_counter(), time.process_time(), time.thread_time())

    def loop_ended(self) -> None:
        assert self._loop0 is not None, "loop_ended without loop_started"
        wall0, cpu0, own0 = self._loop0
        self.loop_s = time.perf_counter() - wall0
        self.loop_cpu_s = time.process_time() - cpu0
        self.dispatch_cpu_s = time.thread_time() - own0


def summarize(
    stats: RunStats,
    *,
    study_name: str,
    finished_here: int,
    counts: dict[str, int],
    best: tuple[float | None, int | None],
    stop_reason: str,
    wall_s: float,
    store_cpu_s: float,
    optuna_cpu_s: float,
) -> RunSummary:
    """The summary of one run from the loop's counters and the store thread's."""
    return RunSummary(
        study_name=study_name,
        finished_here=finished_here,
        counts=counts,
        best_value=best[0],
        best_trial=best[1],
        stop_reason=stop_reason,
        wall_s=wall_s,
        loop_s=stats.loop_s,
        worker_busy_s=stats.busy_s,
        worker_idle_s=stats.idle_s,
        worker_cpu_s=stats.worker_cpu_s,
        worker_waits=stats.waits,
        skipped_calls=stats.skipped,
        loop_cpu_s=stats.loop_cpu_s,
        store_cpu_s=store_cpu_s,
        dispatch_cpu_s=stats.dispatch_cpu_s,
        optuna_cpu_s=optuna_cpu_s,
    )
