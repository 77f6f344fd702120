"""The dispatch policy: which calls each worker is sent next, from the state of its slot and its trials.

Pure: no Ray, no Optuna, no store. :class:`DispatchPolicy` reads a :class:`Slot` (the trials a worker holds
and its calls in flight) and the :class:`RunningTrial` s on it, and appends the :class:`Call` s to send to
``slot.inflight``; the loop (``search.engine.coordinator``) sends them and sets each ``Call.ref``.

Thread: every object here belongs to the loop thread (the coordinator's dispatch loop). The store thread
only reads a RunningTrial's recipe, records and timings once the loop has handed the trial over to it in a
store job (``search.engine.ledger``), and never a Slot.

The rules. A worker holds up to ``PIPELINE`` calls, so it never waits for the coordinator between two
steps where nothing can be decided:

* the next step of the trial being fed is queued behind the running one whenever no pruning decision can
  come between them (``may_prune(step)`` is False after that step);
* the next trial's first step is queued behind a trial's last step (or behind the leftovers of a trial a
  gate stopped: they return unrun), never behind a failed trial's leftovers;
* at a gated step (successive halving's rungs, ``search.engine.gate``) the worker decides itself: the trial's next
  step goes behind it on condition that the trial goes on (``When(..., pruned=False)``), and the next
  trial's first step behind that on condition that it stops (``When(..., pruned=True)``);
* at any other step after which the pruner may act, nothing more is sent until the verdict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from search.engine.gate import When

# calls queued on a worker at most: the one it runs and two behind it, so a result the coordinator
# handles late (it shares the CPU with the workers on a small host) still finds the next step waiting
PIPELINE = 3


@dataclass(eq=False)
class RunningTrial:
    """A trial in flight on one worker: its dispatch state (loop thread) and what its steps returned."""

    number: int
    trial_id: int
    recipe: dict[str, Any]
    recipe_id: str
    label: str
    trial: Any = None  # the Optuna trial handle: used by the ledger only (store thread)
    k: int = 0  # steps whose results arrived
    next_k: int = 0  # steps submitted
    done: bool = False  # told (COMPLETE / PRUNED / FAIL): results still in flight are dropped
    intermediate: dict[int, float] = field(default_factory=dict)  # running objective after each step
    system_attrs: dict[str, Any] = field(default_factory=dict)  # what the pruner recorded (rung values)
    baseline: str | None = None  # a reference point: run in full, whatever the pruner says
    gates: list[int] = field(default_factory=list)  # steps after which the worker decides, verdicts pending
    tagged: bool = False  # its worker is recorded (user attribute "worker")
    gated_out: bool = False  # stopped by a worker's gate: its calls still queued return unrun
    reported: int = 0  # steps written with trial.report (store thread)
    records: list[dict[str, Any]] = field(default_factory=list)
    merge_s: float = 0.0
    eval_s: float = 0.0
    worker: str = ""


@dataclass(eq=False)
class Call:
    """One ``run_step`` call: step ``step`` of ``trial``, run only if ``when`` holds on the worker; with a
    gate (the worker decides after it) when ``gate``. ``ref`` is what sending it returned (a Ray ref)."""

    trial: RunningTrial
    step: int
    when: When | None = None
    gate: bool = False
    waited: bool = False  # sent to a worker that had nothing queued (it waited for this call)
    ref: Any = None


@dataclass(eq=False)
class Slot:
    """One worker actor: the trial it is being fed and its calls in flight, oldest first."""

    index: int
    actor: Any
    info: dict[str, Any]
    feeding: RunningTrial | None = None
    # the next trial, its first step sent on condition that the gate in flight stops ``feeding`` (search.engine.gate)
    following: RunningTrial | None = None
    inflight: deque[Call] = field(default_factory=deque)
    last_end: float | None = None  # the worker clock at the end of its previous call

    def trials(self) -> list[RunningTrial]:
        """The distinct unfinished trials this worker holds (in flight, being fed or following)."""
        out: list[RunningTrial] = []
        held = [r for r in (self.feeding, self.following) if r is not None]
        for r in [c.trial for c in self.inflight] + held:
            if not r.done and all(r is not o for o in out):
                out.append(r)
        return out


class DispatchPolicy:
    """The rules of the module docstring over the loop's view of the run.

    ``n_steps``: steps per trial. ``gated``: the pruner decides on the worker (successive halving).
    ``may_prune(step)``: whether the pruner could stop a trial after ``step`` steps (called only for
    ``step < n_steps``). ``take_next(wait)``: the next trial asked ahead, waiting for an ask in progress if
    ``wait``; None when there is none. ``may_start()``: whether asked trials may still start (a budget stop
    lets them, a timeout does not)."""

    def __init__(
        self,
        *,
        n_steps: int,
        gated: bool,
        may_prune: Callable[[int], bool],
        take_next: Callable[[bool], RunningTrial | None],
        may_start: Callable[[], bool],
        pipeline: int = PIPELINE,
    ) -> None:
        self.n_steps = n_steps
        self.gated = gated
        self.may_prune = may_prune
        self.take_next = take_next
        self.may_start = may_start
        self.pipeline = pipeline

    def _prunable(self, step: int) -> bool:
        return step < self.n_steps and self.may_prune(step)

    def top_up(self, slot: Slot) -> tuple[list[Call], list[RunningTrial]]:
        """Queue ``slot``'s next calls (at most ``pipeline`` in flight) without waiting for anything a result
        could change. Returns the calls to send, in order, and the trials started here."""
        calls: list[Call] = []
        started: list[RunningTrial] = []
        while len(slot.inflight) < self.pipeline:
            r = slot.feeding
            if r is None or r.done or r.next_k >= self.n_steps:
                # a new trial: at once on an idle worker, or queued behind a trial's last step, or behind
                # the calls of a trial a gate stopped (they return unrun); not behind a failed one's leftovers
                tail = slot.inflight[-1].trial if slot.inflight else None
                if tail is not None and (
                    r is None
                    or (tail.done and not tail.gated_out)
                    or (not r.done and r.next_k < self.n_steps)
                    or (r.done and not r.gated_out)
                ):
                    break
                # a worker that still has calls queued does not hold up the loop waiting for the asker
                nxt = self._next_for(slot, wait=not slot.inflight)
                if nxt is None:
                    break
                slot.feeding = r = nxt
                started.append(nxt)
            elif r.gates and r.next_k > r.gates[-1]:
                # the worker decides after a step in flight; the step behind it runs if the trial goes on,
                # the next trial's first step (behind that) if it stops; nothing more before the verdict
                self._follow(slot, When(r.trial_id, r.gates[-1], True), calls, started)
                break
            elif r.k < r.next_k and self._prunable(r.next_k):
                if not r.gates or r.gates[-1] != r.next_k:
                    break  # the coordinator decides after the step in flight: the next one waits
                # on the verdict; a step that is a rung itself carries its own gate, and what follows it
                # waits on that one (a verdict exists only where the step before ran)
                self._queue(slot, r, When(r.trial_id, r.gates[-1], False), calls)
                continue
            self._queue(slot, r, None, calls)
        return calls, started

    def _queue(self, slot: Slot, r: RunningTrial, when: When | None, calls: list[Call]) -> None:
        """``r``'s next step on ``slot`` (on condition ``when``), gated where the worker decides after it."""
        if r.next_k == 0:
            r.worker = slot.info["worker"]
        gate = self.gated and self._prunable(r.next_k + 1)
        if gate:
            r.gates.append(r.next_k + 1)
        call = Call(r, r.next_k, when, gate, waited=not slot.inflight and slot.last_end is not None)
        slot.inflight.append(call)
        calls.append(call)
        r.next_k += 1

    def _next_for(self, slot: Slot, wait: bool) -> RunningTrial | None:
        """The trial ``slot``'s worker starts next: the one following (unless its conditional first step is
        still out: it comes back skipped) or a new one."""
        f = slot.following
        if f is not None and f.done:  # its conditional first step raised: it is told FAIL already
            slot.following = f = None
        if f is None:
            return self.take_next(wait)
        if f.next_k or not self.may_start():
            return None
        slot.following = None
        return f

    def _follow(self, slot: Slot, when: When, calls: list[Call], started: list[RunningTrial]) -> None:
        """Queue the next trial's first step on condition ``when`` (the trial being fed stops), if one is
        asked already and the worker has room."""
        if len(slot.inflight) >= self.pipeline:
            return
        nxt = slot.following
        if nxt is None:
            nxt = self.take_next(False)
            if nxt is None:
                return
            slot.following = nxt
            started.append(nxt)
        elif nxt.next_k:
            return  # its first step is out already, on this gate's verdict
        self._queue(slot, nxt, when, calls)

    # ------------------------------------------------------------------ what a result changes

    @staticmethod
    def skipped(call: Call) -> None:
        """``call`` returned unrun (its condition failed on the worker). A following trial's first step is
        sent again, with its gate, once the worker is free."""
        r, k = call.trial, call.step
        if not r.done and r.next_k == k + 1:
            r.next_k = k
            if k + 1 in r.gates:
                r.gates.remove(k + 1)

    @staticmethod
    def ran(slot: Slot, call: Call) -> None:
        """``call`` ran: if it was the following trial's conditional first step, the trial before it stopped
        and this one is now the trial being fed."""
        if call.trial is slot.following:
            slot.feeding, slot.following = call.trial, None

    @staticmethod
    def take_verdict(slot: Slot, r: RunningTrial, pruned: bool) -> bool:
        """The worker's gate decided after ``r.k`` steps; a baseline is never stopped. When the trial stops,
        the following trial (whose conditional first step runs now) is the one fed. Returns whether it
        stops."""
        if r.k in r.gates:
            r.gates.remove(r.k)
        stop = pruned and r.baseline is None
        r.done = r.gated_out = stop
        if stop and slot.following is not None and slot.following.next_k:
            slot.feeding, slot.following = slot.following, None
        return stop

    @staticmethod
    def worker_lost(slot: Slot, r: RunningTrial) -> list[RunningTrial]:
        """The worker process died while running ``r``: every unfinished trial it held, now done (to be
        failed and retried), and the slot emptied for a new actor."""
        lost = ([r] if not r.done else []) + [t for t in slot.trials() if t is not r]
        slot.inflight.clear()
        slot.feeding, slot.following, slot.last_end = None, None, None
        for t in lost:
            t.done = True
        return lost
