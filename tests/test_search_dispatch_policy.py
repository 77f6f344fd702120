"""search.engine.dispatch: the pure dispatch policy, with plain stand-in trials (no Ray, no Optuna, no store).

Each test states the rule from search/engine/dispatch.py's docstring and the calls it implies, worked out by hand
for the given step plan and pruning points, then checks what ``DispatchPolicy.top_up`` queues.
"""

from __future__ import annotations

import sys

from search.engine.dispatch import PIPELINE, DispatchPolicy, RunningTrial, Slot
from search.engine.gate import When


def _trial(n: int, baseline: str | None = None) -> RunningTrial:
    return RunningTrial(
        number=n, trial_id=100 + n, recipe={}, recipe_id=f"r{n}", label=f"t{n}", baseline=baseline
    )


class Supply:
    """Trials asked ahead, in order; records every ``take_next(wait)`` call."""

    def __init__(self, n: int) -> None:
        self.trials = [_trial(i) for i in range(n)]
        self.waits: list[bool] = []

    def take(self, wait: bool) -> RunningTrial | None:
        self.waits.append(wait)
        return self.trials.pop(0) if self.trials else None


def _policy(n_steps: int, prune_at: set[int], gated: bool, supply: Supply, start: bool = True):
    return DispatchPolicy(
        n_steps=n_steps,
        gated=gated,
        may_prune=lambda step: step in prune_at,
        take_next=supply.take,
        may_start=lambda: start,
    )


def _sent(calls) -> list[tuple[int, int]]:
    return [(c.trial.number, c.step) for c in calls]


def _ran(slot: Slot) -> RunningTrial:
    """The oldest call returns having run: its trial has one more step done."""
    call = slot.inflight.popleft()
    call.trial.k = call.step + 1
    slot.last_end = float(call.step)
    return call.trial


def test_the_policy_module_needs_neither_ray_nor_optuna():
    # imported in this process by other tests perhaps; what matters is that dispatch does not import them
    import search.engine.dispatch as d

    src = open(d.__file__, encoding="utf-8").read()
    assert "import ray" not in src and "import optuna" not in src and "from optuna" not in src
    assert "search.engine.dispatch" in sys.modules


def test_without_pruning_points_the_pipeline_fills_and_the_next_trial_queues_behind_the_last_step():
    supply = Supply(3)
    policy, slot = _policy(4, set(), False, supply), Slot(0, None, {"worker": "w"})
    calls, started = policy.top_up(slot)
    assert _sent(calls) == [(0, 0), (0, 1), (0, 2)] and PIPELINE == 3
    assert [r.number for r in started] == [0] and supply.waits == [True]  # an idle worker waits for a trial
    assert not any(c.waited for c in calls)  # its first call ever: no gap to count
    _ran(slot)
    calls, _ = policy.top_up(slot)
    assert _sent(calls) == [(0, 3)]  # room for one: the last step
    _ran(slot)
    calls, started = policy.top_up(slot)
    # behind trial 0's last step: trial 1's first, taken without waiting (the worker has calls queued)
    assert _sent(calls) == [(1, 0)] and [r.number for r in started] == [1] and supply.waits[-1] is False


def test_a_pruning_point_holds_the_next_step_until_the_verdict():
    supply = Supply(2)
    policy, slot = _policy(4, {2, 3}, False, supply), Slot(0, None, {"worker": "w"})
    calls, _ = policy.top_up(slot)
    assert _sent(calls) == [(0, 0), (0, 1)]  # nothing can be decided after step 1; after step 2 it can
    _ran(slot)
    assert policy.top_up(slot) == ([], [])  # step 2's result is not in: the decision is not made
    r = _ran(slot)  # step 2 done: the loop decided the trial goes on
    calls, _ = policy.top_up(slot)
    assert _sent(calls) == [(0, 2)] and r.k == 2
    assert calls[0].waited  # the worker had nothing queued: it waited for the decision


def test_at_a_gated_rung_the_continuation_and_the_next_trial_wait_on_the_workers_verdict():
    supply = Supply(3)
    policy, slot = _policy(4, {1}, True, supply), Slot(0, None, {"worker": "w"})
    calls, started = policy.top_up(slot)
    a, b = started
    assert _sent(calls) == [(0, 0), (0, 1), (1, 0)]
    assert [c.gate for c in calls] == [True, False, True]  # both first steps end at the rung
    assert [c.when for c in calls] == [None, When(a.trial_id, 1, False), When(a.trial_id, 1, True)]
    assert slot.feeding is a and slot.following is b and a.gates == [1]
    # the worker's gate stops trial 0: the following trial is the one fed, trial 0's continuation is moot
    _ran(slot)
    assert policy.take_verdict(slot, a, pruned=True) is True
    assert a.done and a.gated_out and a.gates == [] and slot.feeding is b and slot.following is None


def test_a_baseline_is_never_stopped_by_a_gate():
    supply = Supply(0)
    policy, slot = _policy(4, {1}, True, supply), Slot(0, None, {"worker": "w"})
    base = _trial(0, baseline="vlm_alone")
    supply.trials = [base, _trial(1)]
    policy.top_up(slot)
    _ran(slot)
    assert policy.take_verdict(slot, base, pruned=True) is False
    assert not base.done and slot.feeding is base and slot.following is not None


def test_a_skipped_first_step_of_a_following_trial_is_sent_again_with_its_gate():
    supply = Supply(3)
    policy, slot = _policy(4, {1}, True, supply), Slot(0, None, {"worker": "w"})
    _, (a, b) = policy.top_up(slot)
    _ran(slot)
    assert policy.take_verdict(slot, a, pruned=False) is False  # trial 0 goes on
    slot.inflight.popleft()  # its continuation ran
    a.k = 2
    skipped = slot.inflight.popleft()  # trial 1's first step returned unrun
    policy.skipped(skipped)
    assert b.next_k == 0 and b.gates == [] and slot.following is b
    calls, started = policy.top_up(slot)
    # trial 0 has no rung left: its steps 2 and 3, then trial 1's first step behind its last one, with no
    # condition now (nothing is decided after step 3) and with trial 1's own gate again
    assert _sent(calls) == [(0, 2), (0, 3), (1, 0)] and started == [b]
    assert [c.when for c in calls] == [None, None, None] and [c.gate for c in calls] == [False, False, True]
    assert b.gates == [1] and slot.feeding is b and slot.following is None


def test_no_new_trial_behind_a_failed_trials_leftovers_and_none_after_a_timeout():
    supply = Supply(3)
    policy, slot = _policy(4, set(), False, supply), Slot(0, None, {"worker": "w"})
    _, (a,) = policy.top_up(slot)
    a.done = True  # told FAIL: its two queued calls will come back to be dropped
    slot.inflight.popleft()
    assert policy.top_up(slot) == ([], [])
    slot.inflight.popleft()
    slot.inflight.popleft()
    calls, started = policy.top_up(slot)
    assert _sent(calls) == [(1, 0), (1, 1), (1, 2)] and started[0].number == 1
    # a following trial does not start once asked trials may not (a timeout)
    stopped = _policy(4, {1}, True, Supply(0), start=False)
    held = Slot(1, None, {"worker": "w"}, following=_trial(7))
    assert stopped.top_up(held) == ([], []) and held.following is not None


def test_a_dead_worker_gives_back_every_trial_it_held():
    supply = Supply(3)
    policy, slot = _policy(4, {1}, True, supply), Slot(0, None, {"worker": "w"})
    _, (a, b) = policy.top_up(slot)
    first = slot.inflight[0].trial
    lost = policy.worker_lost(slot, first)
    assert lost == [a, b] and all(t.done for t in lost)
    assert not slot.inflight and slot.feeding is None and slot.following is None and slot.last_end is None
