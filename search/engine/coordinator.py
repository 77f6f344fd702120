"""The coordinator: the loop that passes messages between the workers, the dispatch policy and the ledger.

Three threads run in the coordinator's process (docs/engine.md draws them):

* the loop thread (:meth:`Coordinator.loop`, the caller's thread) owns the dispatch state: the slots and
  the running trials (``search.engine.dispatch``), the run's statistics (``search.engine.run_stats``), the worker pool
  during the run (``search.engine.worker_pool``: a dead worker is restarted here) and the count of COMPLETE trials
  its pruning rules read. It waits on ``ray.wait`` for whichever worker call ends first, takes the
  pruner's verdict where one is due, sends each worker its next calls (``DispatchPolicy.top_up``) and
  hands every store operation to the store thread as a job;
* the store thread (``search.engine.store_queue``, named ``mergesearch-store_0``) owns the study's ledger
  (``search.engine.ledger.StudyLedger``): asks, reports, tells, failures and retries, heartbeats, orphan scans,
  the budget, the recipe cache and the progress counts. Its jobs run in submission order;
* the progress refresh (``rich.live``'s thread) redraws the panel (``search.engine.progress``) that the ledger
  updates.

Between the loop and the store thread only two objects are shared, each thread-safe and written by one
side: ``search.engine.ledger.Handoff`` (trials asked ahead, why the budget stopped, the study's COMPLETE count)
and the ledger's ``StudyView`` (the pruner's copy of the study, ``search.engine.prune_view``).

Workers do not wait for bookkeeping: each holds up to ``PIPELINE`` calls (``search.engine.dispatch``), and at
successive halving's rungs it decides itself (``search.engine.gate``). With the other pruners the loop decides on
the view of the study where the pruner allows it (``search.engine.prune_view.local_decision``), else through the
store thread (report, then ``should_prune``). A trial is asked ahead on the store thread for every worker,
so the loop answers a worker in the time of a Ray round trip, whatever the store costs; SQLite never has
two writers in one process (whose lock waits sleep in steps of up to 100 ms).

Reliability:

* a trial whose merge or scoring raises is told FAIL with ``fail_reason``; the study goes on;
* a worker that dies: its trials are told FAIL and enqueued again (``retry_of``, at most ``max_retries``
  times) and the actor is restarted;
* resume: trials left RUNNING by a coordinator that is gone are failed and enqueued again
  (``search.engine.ledger``), at start and periodically; Optuna's own heartbeat only works inside
  ``study.optimize``, not with ask/tell;
* budget: COMPLETE + PRUNED + RUNNING trials of the whole study stop at ``n_trials``; a trial asked in a
  race beyond it (the higher trial number loses) is failed as ``surplus``;
* stopping (:meth:`Coordinator.close`): the trials in flight and asked ahead are failed and enqueued again.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import optuna
from optuna.trial import TrialState

from search.engine.dispatch import PIPELINE, Call, DispatchPolicy, RunningTrial, Slot
from search.engine.gate import RUNG_PREFIX, Gate, gates
from search.engine.ledger import BUDGET_STOPS, COUNTED, Handoff, StudyLedger, describe_recipe
from search.engine.progress import ProgressView
from search.engine.prune_view import StudyView, local_decision
from search.engine.run_stats import RunStats, RunSummary, summarize
from search.engine.store_queue import StoreQueue
from search.engine.worker_pool import WorkerPool, WorkerStartError, ray_error_cause
from search.study.objective_values import dataset_weights, objective_values, running_scores
from search.study.resolve import Resolved
from search.study.space import SearchSpace
from search.study.spec import StudySpec

# the store thread's nice value (search.engine.store_queue): CPU workers on the same cores come before the store
STORE_NICE = 10

# names other modules import from here
_describe = describe_recipe
_cause = ray_error_cause
__all__ = [
    "BUDGET_STOPS",
    "COUNTED",
    "PIPELINE",
    "Call",
    "Coordinator",
    "RunSummary",
    "RunningTrial",
    "Slot",
    "WorkerStartError",
    "objective_values",
    "running_scores",
]


class Coordinator:
    """Runs one study until its budget is met; see the module docstring for the threads and the rules.

    ``open()`` opens the study (the ledger); ``run()`` starts the workers, runs the loop and stops them.
    ``start()`` / ``close()`` (or ``with coordinator:``) start and stop Ray and the workers without the loop.
    """

    def __init__(
        self,
        spec: StudySpec,
        resolved: Resolved,
        *,
        storage: str | None = None,
        ray_address: str | None = None,
        workers: int | None = None,
        console: Any = None,
        live: bool | None = None,
        grace_s: float = 600.0,
        beat_s: float = 10.0,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.resolved = resolved
        self.beat_s = beat_s
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.panel = ProgressView(console, live=live, title=f"study {spec.name}")
        self.store_thread = StoreQueue(nice=STORE_NICE)  # runs every ledger job (search.engine.store_queue)
        self.handoff = Handoff()
        self.ledger = StudyLedger(
            spec,
            SearchSpace(spec, resolved.models()),
            coordinator_id=self.id,
            panel=self.panel,
            handoff=self.handoff,
            storage_url=storage,
            grace_s=grace_s,
        )
        self.pool = WorkerPool(
            spec, resolved, n_workers=workers or spec.workers, ray_address=ray_address, worker_env=worker_env
        )
        self.stats = RunStats()
        # the loop thread's state: the workers, the step plan, the rules, the COMPLETE trials it knows of
        self.slots: list[Slot] = []
        self.steps: list[Any] = []
        self.datasets: tuple[str, ...] = ()
        self.policy = DispatchPolicy(
            n_steps=0,
            gated=False,
            may_prune=self._may_prune,
            take_next=self.take_next,
            may_start=self.handoff.may_start,
        )
        self._pruner: optuna.pruners.BasePruner | None = None
        self._study_view: StudyView | None = None
        self._weights: dict[str, float] = {}
        self._n_complete = 0  # COMPLETE trials this loop finished or saw, before the store told them

    # ------------------------------------------------------------------ the parts

    @property
    def spec(self) -> StudySpec:
        """The study as run (the ledger adds warm-start trials to ``n_trials`` when it opens the study)."""
        return self.ledger.spec

    @property
    def study(self) -> optuna.Study | None:
        return self.ledger.study

    @property
    def tally(self) -> Any:
        """The progress counts (``search.engine.progress.Tally``), kept by the ledger."""
        return self.ledger.tally

    @property
    def n_complete(self) -> int:
        """COMPLETE trials of the study as the loop knows them: its own, and the ledger's last count."""
        return max(self._n_complete, self.handoff.n_complete)

    def open(self) -> optuna.Study:
        """Open the study, register this coordinator, recover orphans, enqueue the baselines once."""
        study = self.ledger.open()
        self._study_view = self.ledger.study_view
        return study

    def use_workers(
        self,
        slots: list[Slot],
        steps: list[Any],
        datasets: tuple[str, ...],
        generation: dict[str, Any] | None = None,
        scoring_key: str | None = None,
    ) -> None:
        """Dispatch to ``slots`` (workers started by the pool, or stand-ins) with their step plan (per step,
        ``[dataset, items]`` of each chunk), dataset order, generation settings and scoring key
        (search.engine.recipe_cache)."""
        assert self.study is not None, "open() before use_workers()"
        self.slots, self.steps, self.datasets = slots, steps, tuple(datasets)
        self.ledger.use_plan(steps, self.datasets, generation, len(slots), scoring_key)
        self._pruner = self.study.pruner
        self._weights = dataset_weights(self.spec, self.datasets)
        self.policy.n_steps = len(steps)
        self.policy.gated = gates(self._pruner, self.spec.multi_objective)

    def start(self) -> None:
        """Ray and the workers (models loaded); on failure, what was started is stopped again."""
        try:
            slots = self.pool.start()
            self.use_workers(
                slots, self.pool.steps, self.pool.datasets, self.pool.generation, self.pool.scoring_key
            )
        except BaseException:
            self.close()
            raise
        items = sum(n for step in self.steps for _, n in step)
        self.panel.event(
            f"{len(slots)} worker(s) on {self.pool.device}: {', '.join(s.info['worker'] for s in slots)}; "
            f"{items} proxy items in {len(self.steps)} steps"
        )

    def close(self) -> None:
        """The store thread's queue is written; trials in flight or asked ahead are failed and enqueued
        again (so a rerun finishes them); this coordinator is marked stopped; the workers and Ray stop."""
        self.store_thread.close()  # from here on ledger jobs run inline, on this thread
        if self.study is not None:
            pending = [t for s in self.slots for t in s.trials()]
            pending += [r for r in self.handoff.clear() if not r.done]
            self.ledger.interrupt(pending)
            for slot in self.slots:
                slot.inflight.clear()
                slot.feeding = slot.following = None
            self.ledger.sign_off()
        self.pool.close()

    def __enter__(self) -> Coordinator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the run

    def run(self) -> RunSummary:
        """Run until the budget is met (n_trials / timeout) or every worker is idle with nothing to ask."""
        wall0 = time.perf_counter()
        if self.study is None:
            self.open()
        if self.ledger.budget_left():  # a finished study resumes without starting Ray or loading models
            with self:
                self.stats.loop_started()
                with self.panel:
                    self.loop()
                self.stats.loop_ended()
        else:
            self.panel.event(f"nothing to do: {self.ledger.stop}")
        _, counts = self.ledger.counted()
        return summarize(
            self.stats,
            study_name=self.spec.name,
            finished_here=self.tally.finished_here,
            counts=counts,
            best=self.ledger.best(counts),
            stop_reason=self.ledger.stop or "done",
            wall_s=time.perf_counter() - wall0,
            store_cpu_s=self.store_thread.cpu_s,
            optuna_cpu_s=self.ledger.optuna_cpu_s,
        )

    def loop(self) -> None:
        """Start the store thread, dispatch until the budget is met and every call is back, then show the
        final counts. An error a store job raised is raised here."""
        import gc

        # what start-up left (torch, transformers, Ray, Optuna: ~10^6 objects) goes to the permanent
        # generation: a full collection over it stalled every thread of the loop for 300-350 ms
        gc.collect()
        gc.freeze()
        self.store_thread.start()
        try:
            self._dispatch_until_done()
            self.store_thread.call(self.ledger.refresh, True)  # the final counts on the panel
        finally:
            gc.unfreeze()
        if self.store_thread.error is not None:
            raise self.store_thread.error

    def _alive(self) -> bool:
        return self.store_thread.error is None

    def _dispatch_until_done(self) -> None:
        import ray

        while True:
            for slot in self.slots:
                self.feed(slot)
            # only now, the workers fed: an ask is a burst of Python on the store thread, and the GIL it
            # holds would delay the dispatch
            self.request_asks()
            if self.store_thread.error is not None:
                raise self.store_thread.error
            heads = {s.inflight[0].ref: s for s in self.slots if s.inflight}
            if not heads:
                # an ask in progress may still add a trial: run it before ending
                if self.handoff.settle(self._alive) and self._alive() and self.handoff.may_start():
                    continue
                return
            # a worker whose trial waits on a gate wants the next trial queued behind it: look again as soon as
            # the ask in progress may have brought one, not only at the next result
            wanting = self.handoff.pending and any(
                s.feeding is not None and s.feeding.gates and s.following is None for s in self.slots
            )
            asked = self.handoff.asked
            ready, _ = ray.wait(list(heads), num_returns=1, timeout=0.02 if wanting else 1.0)
            while wanting and not ready and asked == self.handoff.asked and self.handoff.pending:
                # nothing came back and no ask ended: wait again without going over every worker
                self._periodic()
                ready, _ = ray.wait(list(heads), num_returns=1, timeout=0.02)
            for ref in ready:
                slot = heads[ref]
                call = slot.inflight.popleft()
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as err:
                    self.handle_error(slot, call, err)
                    continue
                self.handle_result(slot, call, res)
            self._periodic()

    def _periodic(self) -> None:
        """Heartbeat, orphan scan, and the study read once a second (progress panel, budget, the pruner's
        copy of the study), as store jobs."""
        self.store_thread.every("beat", self.beat_s, self.ledger.beat)
        self.store_thread.every("orphans", max(self.ledger.grace_s / 2, 5.0), self.ledger.recover_orphans)
        self.store_thread.every("tally", 1.0, self.ledger.refresh)

    # ------------------------------------------------------------------ asking ahead

    def request_asks(self) -> None:
        """Keep one trial per worker asked ahead: ask jobs go to the store thread behind the writes
        submitted before them (so the sampler sees every result told so far). A trial following one on a
        worker counts as asked ahead: the next ask waits until it starts, so the sampler sees the verdict on
        the trial before it."""
        if not self.store_thread.threaded:
            return
        following = sum(1 for s in self.slots if s.following is not None)
        for _ in range(self.handoff.requested(max(1, len(self.slots)) - following)):
            self.store_thread.submit(self.ledger.ask_ahead)

    def take_next(self, wait: bool = True) -> RunningTrial | None:
        """The next trial asked ahead (waiting for an ask in progress, if ``wait``); without the store thread
        (tests, inline use) one asked here. None when the budget is spent, the study stopped, or nothing is
        ready and not ``wait``."""
        if not self.handoff.may_start():
            return None
        if not self.store_thread.threaded:
            ready = self.handoff.take(False)
            if ready is not None:
                return ready
            return None if self.handoff.stop else self.ledger.ask()
        return self.handoff.take(wait, self._alive)

    # ------------------------------------------------------------------ dispatch

    def _may_prune(self, step: int) -> bool:
        """Whether the pruner could stop a trial after ``step`` steps (single objective only)."""
        from search.study.pruners import may_prune

        if self.spec.multi_objective or step >= len(self.steps):
            return False
        return may_prune(self._pruner, step, self.n_complete)

    def feed(self, slot: Slot) -> list[RunningTrial]:
        """Send ``slot``'s worker its next calls (``DispatchPolicy.top_up``); returns the trials started."""
        started = self._send(slot)
        self._tag(started)
        return started

    def _send(self, slot: Slot) -> list[RunningTrial]:
        calls, started = self.policy.top_up(slot)
        for call in calls:
            r = call.trial
            if call.waited:
                self.stats.waits += 1
            gate = None
            if call.gate:
                assert self._study_view is not None and self.study is not None
                gate = Gate(
                    pruner=self._pruner,
                    direction=self.study.direction,
                    number=r.number,
                    trial_id=r.trial_id,
                    step=call.step + 1,
                    weights=self._weights,
                    rungs=self._study_view.rung_records(RUNG_PREFIX),
                    binding=r.baseline is None,
                )
            call.ref = slot.actor.run_step.remote(r.recipe, r.recipe_id, call.step, gate, call.when)
        return started

    def _tag(self, started: list[RunningTrial]) -> None:
        for r in started:  # where it runs, while it runs (once: a following trial may be sent twice)
            if not r.tagged:
                r.tagged = True
                self.store_thread.submit(self.ledger.tag_worker, r)

    # ------------------------------------------------------------------ results

    def handle_result(self, slot: Slot, call: Call, res: dict[str, Any]) -> None:
        """``call`` came back with ``res``: decide (prune or not) where the pruner may act, refill the worker,
        then hand the bookkeeping to the store thread."""
        self.stats.call_ended(slot.last_end, res)
        slot.last_end = res["t_end"]
        r, k = call.trial, call.step
        if res.get("skipped"):  # its condition failed on the worker (search.engine.gate): nothing ran
            self.policy.skipped(call)
            self.feed(slot)
            return
        self.policy.ran(slot, call)
        if r.done:  # told FAIL while this step was queued: drop it
            self.feed(slot)
            return
        r.records.extend(res["records"])
        r.merge_s += res["merge_s"]
        r.eval_s += res["eval_s"]
        r.worker = res["worker"]
        r.k = k + 1
        scores = running_scores(r.records, self.datasets)
        values = objective_values(scores, self.spec, self.datasets)
        if r.k >= len(self.steps):
            self._n_complete = self.n_complete + 1  # before refilling: the pruner may decide sooner
            started = self._send(slot)
            self._finish(r, TrialState.COMPLETE, scores, values)
        elif res.get("gate") is None and r.next_k > r.k:
            # the next step is already queued: no decision was possible here
            started = self._send(slot)
            r.intermediate[r.k] = values[0]
            if not self.spec.multi_objective and self._report_here(r.k):
                self.store_thread.submit(self.ledger.report, r, r.k, values[0])
        else:  # a verdict: the worker's gate, or the pruner on the coordinator's copy of the study
            if res.get("gate") is not None:
                pruned = self._take_verdict(slot, r, values[0], res["gate"])
            else:
                pruned = r.done = self._decide(r, values[0])  # before refilling: the worker moves on
            started = self._send(slot)
            self.store_thread.submit(self.ledger.report, r, r.k, values[0])
            if pruned:  # the pruner's records (rung values) go with the trial's last attributes
                self._finish(r, TrialState.PRUNED, scores, values)
            else:
                self.store_thread.submit(self.ledger.flush_rungs)
        self._tag(started)

    def handle_error(self, slot: Slot, call: Call, err: Exception) -> None:
        """``call`` raised: the trial failed (the worker lives on) or the worker process died (every trial
        it held is failed and retried, the worker restarted)."""
        import ray

        r = call.trial
        if isinstance(err, ray.exceptions.RayTaskError):
            if not r.done:
                r.done = True
                self.store_thread.submit(self.ledger.fail, r.number, ray_error_cause(err))
            self.feed(slot)
            return
        lost = self.policy.worker_lost(slot, r)
        reason = f"worker {slot.info.get('worker')} died during the trial: {type(err).__name__}"
        for t in lost:
            self.store_thread.submit(self.ledger.fail, t.number, reason, "worker died")
        self.pool.restart(slot)
        self.panel.event(f"worker {slot.index} restarted as {slot.info['worker']}")

    def _take_verdict(self, slot: Slot, r: RunningTrial, value: float, verdict: dict[str, Any]) -> bool:
        """A worker's gate decided after ``r.k`` steps: keep the rung records the pruner made there (flushed
        with this coordinator's own); returns whether ``r`` stops."""
        assert self._study_view is not None
        r.intermediate[r.k] = value
        self._study_view.record(r.trial_id, verdict["attrs"])
        r.system_attrs.update(verdict["attrs"])
        return self.policy.take_verdict(slot, r, bool(verdict["pruned"]))

    def _decide(self, r: RunningTrial, value: float) -> bool:
        """The pruner's verdict after ``r.k`` steps: from the coordinator's copy of the study where the pruner
        allows it (``search.engine.prune_view``), else through the store (report first, then ``should_prune``, on
        the store thread, waiting for it). A baseline is never pruned (it is a reference point), though the
        pruner records it as usual."""
        assert self._study_view is not None
        r.intermediate[r.k] = value
        if local_decision(self._pruner):
            verdict = self._study_view.decide(
                self._pruner, r.number, r.trial_id, r.intermediate, r.system_attrs
            )
            self._n_complete = max(self.n_complete, self._study_view.n_complete)
        else:
            verdict = self.store_thread.call(self.ledger.report_and_ask, r, r.k, value)
        return verdict and r.baseline is None

    def _report_here(self, step: int) -> bool:
        from search.study.pruners import reports_step

        return reports_step(self._pruner, step, self.n_complete)

    def _finish(
        self, r: RunningTrial, state: TrialState, scores: dict[str, float], values: list[float]
    ) -> None:
        """The trial is over: no more of its results count; the ledger writes it on the store thread."""
        r.done = True
        self.store_thread.submit(self.ledger.finish, r, state, scores, values)
