"""The coordinator's dispatch rules with a recording stand-in for the Ray actor (no Ray, real Optuna study).

A worker holds at most ``PIPELINE`` calls; the next step is queued before the previous result where no
pruning decision can come between them, or, at successive halving's rungs, on condition of the verdict the
worker reaches itself (search.engine.gate: the stand-in runs the worker's own ``GateBook``), so a pruned trial
never runs a step it did not need.
"""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from search.engine.coordinator import Coordinator, Slot
from search.engine.gate import GateBook
from search.engine.recipe_cache import cache_key
from search.study.resolve import Resolved
from search.study.spec import spec_from_dict

RES = Resolved("/m/vlm", "/m/llm", "/m/base", ("A", "B"), None)
STEPS = 4


class _RunStep:
    def __init__(self, calls: list[tuple[int, int]], numbers: dict[str, int]) -> None:
        self.calls, self.numbers = calls, numbers
        self.sent: dict[str, tuple] = {}  # ref → (recipe id, step, gate, when), for a stand-in ray.get
        self.ran: list[tuple[int, int]] = []  # (trial number, step) of the calls that ran, in order
        self.book = GateBook()  # the worker's side of search.engine.gate, as TrialWorker keeps it

    def remote(self, recipe: dict, recipe_id: str, k: int, gate=None, when=None) -> str:
        self.calls.append((self.numbers[recipe_id], k))
        ref = f"ref-{id(self)}-{len(self.calls)}"
        self.sent[ref] = (recipe_id, k, gate, when)
        return ref

    def execute(self, ref: str, records: list[dict], t_start: float, t_end: float) -> dict:
        """What ``TrialWorker.run_step`` returns for the call ``ref`` scoring ``records`` (called in the
        worker's order): skipped when its condition fails, the gate's verdict when it carries one."""
        recipe_id, k, gate, when = self.sent[ref]
        if not self.book.admits(when):
            return {"skipped": True, "worker": "fake", "t_start": t_start, "t_end": t_start}
        self.ran.append((self.numbers[recipe_id], k))
        verdict = self.book.after_step(k, records, gate)
        return {
            "records": records,
            "merge_s": 0.0,
            "eval_s": 0.1,
            "worker": "fake",
            "gate": verdict,
            "t_start": t_start,
            "t_end": t_end,
        }


class FakeActor:
    """Records ``run_step.remote`` calls as (trial number, step); runs them when their result is taken."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.numbers: dict[str, int] = {}
        self.run_step = _RunStep(self.calls, self.numbers)


def _coordinator(
    tmp_path, pruner: dict, n_trials: int = 3, baselines: list | None = None
) -> tuple[Coordinator, Slot, FakeActor]:
    spec = spec_from_dict(
        {
            "name": "dispatch",
            "storage": f"sqlite:///{tmp_path}/s.db",
            "output_dir": str(tmp_path / "out"),
            "n_trials": n_trials,
            "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
            "objectives": {"datasets": ["A", "B"]},
            "space": {"methods": ["task_arithmetic"]},
            "pruner": pruner,
            "baselines": baselines or [],
        }
    )
    c = Coordinator(spec, RES, live=False)
    c.open()
    actor = FakeActor()
    slot = Slot(0, actor, {"worker": "fake"})
    c.use_workers([slot], [[["A", 2], ["B", 2]]] * STEPS, ("A", "B"))
    real_ask = c.ledger.ask

    def ask():  # remember which trial each recipe id belongs to, for readable call logs
        r = real_ask()
        if r is not None:
            actor.numbers[r.recipe_id] = r.trial.number
        return r

    c.ledger.ask = ask  # type: ignore[method-assign]
    return c, slot, actor


def _deliver(c: Coordinator, slot: Slot, correct: bool | list[bool], t: list[float]) -> tuple[int, int]:
    """The oldest call in flight returns, its 4 items (A, A, B, B) all ``correct`` or as listed; ``t`` is the
    worker clock, advanced by 1 s per call, with a 0.01 s gap before each call."""
    call = slot.inflight.popleft()
    t[0] += 0.01
    start = t[0]
    t[0] += 1.0
    right = correct if isinstance(correct, list) else [correct] * 4
    recs = [{"dataset": d, "correct": ok} for d, ok in zip("AABB", right, strict=True)]
    c.handle_result(slot, call, slot.actor.run_step.execute(call.ref, recs, start, t[0]))
    return call.trial.number, call.step


def test_without_pruner_steps_and_next_trial_queue_behind_the_running_call(tmp_path):
    c, slot, actor = _coordinator(tmp_path, {"name": "none"}, n_trials=2)
    c.feed(slot)
    assert actor.calls == [(0, 0), (0, 1), (0, 2)]  # PIPELINE = 3 calls wait on the worker
    clock = [0.0]
    for _ in range(2):
        _deliver(c, slot, True, clock)
    assert actor.calls[-2:] == [(0, 3), (1, 0)]  # the last step of trial 0, then trial 1's first behind it
    while slot.inflight:
        _deliver(c, slot, True, clock)
    assert actor.calls == [(0, k) for k in range(STEPS)] + [(1, k) for k in range(STEPS)]
    trials = c.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(t.value == 1.0 and t.user_attrs["n_items"] == 4 * STEPS for t in trials)
    assert all(t.intermediate_values == {} for t in trials)  # nothing reads them without a pruner
    # 8 calls, 7 gaps of 0.01 s between them on the worker's clock
    assert c.stats.idle_s == pytest.approx(7 * 0.01) and c.stats.busy_s == pytest.approx(8.0)


def test_pruning_points_wait_for_the_decision_and_waste_no_step(tmp_path):
    pruner = {"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 2}}
    c, slot, actor = _coordinator(tmp_path, pruner, n_trials=3)
    c.feed(slot)
    clock = [0.0]
    while c.n_complete == 0:  # trial 0 runs in full: nothing complete yet, so nothing can be pruned
        _deliver(c, slot, True, clock)
    assert actor.calls[:STEPS] == [(0, k) for k in range(STEPS)]
    # a median pruner compares other trials' values at every step: all reported
    assert c.study.trials[0].intermediate_values == {k: 1.0 for k in range(1, STEPS)}
    # trial 1 (all wrong): step 1 is queued at once (no decision before 2 steps of warm-up), step 2 only
    # after the report of step 2 ... which prunes it: its steps 2 and 3 are never sent
    assert slot.inflight[0].trial.number == 1
    calls_before = len(actor.calls)
    assert _deliver(c, slot, False, clock) == (1, 0)
    assert actor.calls[calls_before:] == []  # step 1 was already queued; step 2 waits for the decision
    assert _deliver(c, slot, False, clock) == (1, 1)
    t1 = c.study.trials[1]
    assert t1.state == TrialState.PRUNED and t1.user_attrs["n_items"] == 8
    # a pruned trial has no value to reuse: only the complete trial 0 is in the recipe cache
    assert set(c.ledger.recipe_cache) == {cache_key(c.study.trials[0].user_attrs["recipe_id"], c.ledger.scoring_key)}
    assert (1, 2) not in actor.calls and actor.calls[-2:] == [(2, 0), (2, 1)]  # the worker moved on at once


@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 1}},
        # decided on the worker (search.engine.gate): the gate records the rung value and lets the baseline on
        {"name": "successive_halving", "options": {"min_resource": 1, "reduction_factor": 3}},
    ],
    ids=["median", "gate"],
)
def test_a_baseline_runs_in_full_whatever_the_pruner_says(tmp_path, pruner):
    baselines = [
        {"name": "llm_lm", "method": "linear", "weight": 1.0},
        {"name": "vlm_alone", "method": "linear", "weight": 0.0},
    ]
    c, slot, actor = _coordinator(tmp_path, pruner, n_trials=3, baselines=baselines)
    c.feed(slot)
    clock = [0.0]
    while c.n_complete == 0:
        _deliver(c, slot, True, clock)  # baseline llm_lm: all right
    while c.n_complete == 1:
        _deliver(c, slot, False, clock)  # baseline vlm_alone: all wrong, below the median at every step
    t1 = c.study.trials[1]
    assert t1.user_attrs["baseline"] == "vlm_alone" and t1.state == TrialState.COMPLETE
    assert t1.value == 0.0 and t1.user_attrs["n_items"] == 4 * STEPS
    if pruner["name"] == "successive_halving":
        assert t1.system_attrs["completed_rung_0"] == 0.0  # its rung value is recorded all the same
    while c.study.trials[2].state == TrialState.RUNNING:
        _deliver(c, slot, False, clock)  # a sampled trial as bad as that baseline is pruned at step 1
    assert c.study.trials[2].state == TrialState.PRUNED and c.study.trials[2].user_attrs["n_items"] == 4


def test_a_trial_that_raises_fails_and_its_queued_step_is_dropped(tmp_path):
    ray = pytest.importorskip("ray")
    c, slot, actor = _coordinator(tmp_path, {"name": "none"}, n_trials=2)
    c.feed(slot)
    call = slot.inflight.popleft()
    err = ray.exceptions.RayTaskError("run_step", "traceback", RuntimeError("CUDA out of memory"))
    c.handle_error(slot, call, err)
    t0 = c.study.trials[0]
    assert t0.state == TrialState.FAIL and "CUDA out of memory" in t0.user_attrs["fail_reason"]
    assert [(e.trial.number, e.step) for e in slot.inflight] == [(0, 1), (0, 2)]  # already on the worker
    clock = [0.0]
    _deliver(c, slot, True, clock)  # dropped
    assert len(actor.calls) == 3  # no new trial queued behind a failed one's leftovers
    _deliver(c, slot, True, clock)  # dropped; the worker is free: trial 1 starts
    assert c.study.trials[0].state == TrialState.FAIL and not c.study.trials[0].intermediate_values
    assert actor.calls[-3:] == [(1, 0), (1, 1), (1, 2)]


@pytest.mark.parametrize(
    "make",
    [
        lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        lambda: optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=2, interval_steps=2),
        lambda: optuna.pruners.PercentilePruner(75.0, n_startup_trials=1, n_warmup_steps=1, n_min_trials=2),
        lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3),
        lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    ],
    ids=["median", "median-interval", "percentile", "asha-2-3", "asha-1-2"],
)
def test_decisions_from_the_view_equal_optunas_own(make):
    """Twin studies see the same 200 random trials: one decides with trial.should_prune, the other with
    search.engine.prune_view (writes flushed after each decision, as the coordinator does); every verdict and
    every stored rung record must agree."""
    _twin_studies_agree(make, refresh=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3),
        lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    ],
    ids=["asha-2-3", "asha-1-2"],
)
def test_successive_halving_needs_no_fresh_read_of_the_coordinators_own_trials(make):
    """The view is read from the store only once, before any trial: successive halving's verdicts still
    equal Optuna's, since the rung values it compares are the ones this coordinator recorded itself
    (between two reads of the store, trials asked since the last one compete with what they recorded)."""
    _twin_studies_agree(make, refresh=False)


def _twin_studies_agree(make, refresh: bool) -> None:
    import random

    from search.engine.prune_view import StudyView, local_decision

    rng = random.Random(0)
    ref = optuna.create_study(direction="maximize", pruner=make())
    twin = optuna.create_study(direction="maximize", pruner=make())
    assert local_decision(twin.pruner)
    view = StudyView(twin, max_age_s=0.0, auto_refresh=refresh)
    view.refresh(force=True)
    decisions = pruned = 0
    for _ in range(200):
        a, b = ref.ask(), twin.ask()
        level = rng.random()
        attrs: dict = {}
        values: dict[int, float] = {}
        for step in range(1, 8):
            values[step] = min(1.0, max(0.0, level + rng.gauss(0, 0.1)))
            a.report(values[step], step)
            mine = view.decide(twin.pruner, b.number, b._trial_id, values, attrs)
            b.report(values[step], step)
            view.flush()
            assert mine == a.should_prune(), (a.number, step)
            decisions += 1
            if mine:
                pruned += 1
                ref.tell(a, state=optuna.trial.TrialState.PRUNED)
                twin.tell(b, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            ref.tell(a, values[7])
            twin.tell(b, values[7])
        assert twin.trials[-1].system_attrs == ref.trials[-1].system_attrs == attrs
    assert pruned > 20 and decisions - pruned > 50  # both verdicts, many times


def test_trials_asked_ahead_start_after_a_budget_stop_but_not_after_a_timeout(tmp_path):
    c, slot, actor = _coordinator(tmp_path, {"name": "none"}, n_trials=3)
    ready = c.ledger.ask()
    assert ready is not None
    c.handoff.put(ready)
    c.handoff.set_stop("timeout")  # the study's time is up: nothing more starts; shutdown re-enqueues it
    assert c.take_next() is None and c.feed(slot) == [] and actor.calls == []
    c.handoff.set_stop("n_trials reached")  # asked within the budget: it runs
    assert c.take_next() is ready


def _level(recipe_id: str) -> float:
    """A recipe's made-up quality in [0, 1): item j of every step is right when level > (j + 0.5) / 4."""
    return int(recipe_id[:8], 16) / 16**8


def test_the_loop_leaves_every_storage_call_to_the_store_thread(tmp_path, monkeypatch):
    """The real dispatch loop (``Coordinator.loop``) over two stand-in workers and a stand-in ``ray.wait`` /
    ``ray.get``: every call into Optuna's storage made while it runs comes from the store thread, and the
    study it leaves is right: every trial told, pruned ones stopped at the decision with no step sent
    after it, complete ones with the value their records give."""
    ray = pytest.importorskip("ray")
    pruner = {"name": "successive_halving", "options": {"min_resource": 1, "reduction_factor": 3}}
    c, slot, actor = _coordinator(tmp_path, pruner, n_trials=16)
    other = FakeActor()
    other.numbers = other.run_step.numbers = actor.numbers
    c.use_workers([slot, Slot(1, other, {"worker": "fake-2"})], c.steps, c.datasets)
    clock = [0.0]

    def fake_wait(refs, num_returns=1, timeout=None):
        return [refs[len(clock) % len(refs)]], []  # alternate between the workers' oldest calls

    def fake_get(ref):
        run_step = actor.run_step if ref in actor.run_step.sent else other.run_step
        clock.append(0.0)
        t = 0.01 * len(clock)
        level = _level(run_step.sent[ref][0])
        recs = [{"dataset": d, "correct": level > (j + 0.5) / 4} for j, d in enumerate("AABB")]
        return run_step.execute(ref, recs, t, t)

    monkeypatch.setattr(ray, "wait", fake_wait)
    monkeypatch.setattr(ray, "get", fake_get)
    storage = c.study._storage
    callers: list[tuple[str, str]] = []
    for name in dir(type(storage)):
        member = getattr(storage, name)
        if name.startswith("__") or not callable(member):
            continue

        def recorded(*args, _f=member, _name=name, **kwargs):
            callers.append((_name, threading.current_thread().name))
            return _f(*args, **kwargs)

        setattr(storage, name, recorded)
    c.loop()
    c.store_thread.close()
    assert {n for n, _ in callers} >= {"create_new_trial", "set_trial_state_values", "get_all_trials"}
    assert {t for _, t in callers} == {"mergesearch-store_0"}, [x for x in callers if "store" not in x[1]]

    trials = c.study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 16 and set(states) == {TrialState.COMPLETE, TrialState.PRUNED}
    ran = actor.run_step.ran + other.run_step.ran
    for t in trials:
        sent_steps = sorted(k for n, k in ran if n == t.number)
        level = _level(t.user_attrs["recipe_id"])
        if t.state == TrialState.PRUNED:
            stop = max(t.intermediate_values)
            assert sent_steps == list(range(stop)) and t.user_attrs["n_items"] == 4 * stop
        else:
            assert sent_steps == list(range(STEPS)) and t.user_attrs["n_items"] == 4 * STEPS
            assert t.value == sum(level > (j + 0.5) / 4 for j in range(4)) / 4


def _replay_verdicts(trials: list, make_pruner) -> list[int | None]:
    """Each trial's stored reports replayed in trial order on a fresh study with Optuna's own
    ``should_prune``: the step each one is pruned at (None: it went on to the end)."""
    ref = optuna.create_study(direction="maximize", pruner=make_pruner())
    out: list[int | None] = []
    for t in trials:
        a = ref.ask()
        stop = None
        for step, value in sorted(t.intermediate_values.items()):
            a.report(value, step)
            if a.should_prune():
                stop = step
                break
        ref.tell(a, state=TrialState.PRUNED) if stop else ref.tell(a, 0.0)
        out.append(stop)
    return out


def test_at_a_rung_the_worker_decides_and_its_next_call_is_already_queued(tmp_path):
    """Successive halving's gate (search.engine.gate): behind a rung step the worker holds the trial's next step
    (runs if it goes on) and the next trial's first step (runs if it stops), so it never waits for the
    coordinator; with one worker every verdict is the one Optuna's ``should_prune`` gives."""
    pruner = {"name": "successive_halving", "options": {"min_resource": 1, "reduction_factor": 3}}
    c, slot, actor = _coordinator(tmp_path, pruner, n_trials=8)
    # running values 1, 0.75, 0, 0, 0, 0.75, 0, 1: trial 5 goes on only because trial 4's rung value counts
    # (6 competitors put the bar at the second best), which the coordinator had not seen when it sent trial
    # 5's first step: the worker adds the rung records of its own decisions
    three = [True, True, True, False]
    outcomes = {0: True, 1: three, 5: three, 7: True}
    c.feed(slot)
    assert actor.calls == [(0, 0), (0, 1), (1, 0)]  # rung step, its continuation, the next trial's start
    gate, when = actor.run_step.sent[slot.inflight[0].ref][2:]
    assert gate is not None and gate.step == 1 and when is None
    assert actor.run_step.sent[slot.inflight[1].ref][3] == (gate.trial_id, 1, False)
    assert actor.run_step.sent[slot.inflight[2].ref][3] == (gate.trial_id, 1, True)
    clock = [0.0]
    skipped = 0
    while slot.inflight:
        number = slot.inflight[0].trial.number
        before = len(actor.run_step.ran)
        _deliver(c, slot, outcomes.get(number, False), clock)
        skipped += len(actor.run_step.ran) == before
        told = sum(t.state != TrialState.RUNNING for t in c.study.get_trials())
        assert slot.inflight or told == 8  # the worker always has its next call
    assert c.stats.waits == 0 and skipped > 0
    trials = c.study.get_trials()
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    verdicts = _replay_verdicts(
        trials, lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    )
    assert [max(t.intermediate_values) if t.state == TrialState.PRUNED else None for t in trials] == verdicts
    assert verdicts == [None, 1, 1, 1, 1, 3, 1, None]  # both verdicts; trial 5 passed the first rung
    for t in trials:  # a pruned trial ran up to its verdict; nothing after it
        ran = [k for n, k in actor.run_step.ran if n == t.number]
        assert ran == list(range(max(t.intermediate_values) if t.state == TrialState.PRUNED else STEPS))
        keys = sorted(k for k in t.system_attrs if k.startswith("completed_rung_"))
        assert keys == [f"completed_rung_{i}" for i in range(len(keys))] and keys  # its rung records


def test_a_following_trial_whose_first_step_raises_does_not_stall_its_worker(tmp_path):
    ray = pytest.importorskip("ray")
    pruner = {"name": "successive_halving", "options": {"min_resource": 1, "reduction_factor": 3}}
    c, slot, actor = _coordinator(tmp_path, pruner, n_trials=4)
    c.feed(slot)
    trial_a = slot.inflight[0].trial
    trial_a.done = True  # trial 0 failed meanwhile (e.g. told FAIL by another path): its verdict never counts
    follower = slot.following
    assert follower is not None and follower.trial.number == 1
    slot.inflight.popleft()  # trial 0's rung step: dropped
    slot.inflight.popleft()  # its continuation: dropped
    call = slot.inflight.popleft()
    assert call.trial is follower and call.step == 0
    err = ray.exceptions.RayTaskError("run_step", "traceback", RuntimeError("merge failed"))
    c.handle_error(slot, call, err)  # the follower's first step ran (the worker saw trial 0 stop) and raised
    assert c.study.trials[1].state == TrialState.FAIL
    assert slot.inflight and slot.inflight[0].trial.number == 2  # the worker goes on with a new trial


def test_a_trial_that_passes_a_gate_lets_the_next_trial_follow_it_again_at_the_next(tmp_path):
    """8 steps, rungs after 1, 2 and 4 steps (a rung step right behind another): the next trial's first step, skipped while the trial before it
    went on, is queued again behind that trial's next gate; the worker never waits, and every verdict is
    Optuna's own."""
    pruner = {"name": "successive_halving", "options": {"min_resource": 1, "reduction_factor": 2}}
    c, slot, actor = _coordinator(tmp_path, pruner, n_trials=6)
    c.use_workers([slot], [[["A", 2], ["B", 2]]] * 8, c.datasets)
    levels = {0: [True] * 4, 1: [True, True, True, False], 2: [True, True, True, False], 3: [False] * 4}
    c.feed(slot)
    clock = [0.0]
    while slot.inflight:
        r, k = slot.inflight[0].trial, slot.inflight[0].step
        right = levels.get(r.trial.number, [True, False, True, False])
        _deliver(c, slot, right if k < 2 else [False] * 4, clock)  # trials fall after their second step
        assert slot.inflight or all(t.state != TrialState.RUNNING for t in c.study.get_trials())
    assert c.stats.waits == 0
    trials = c.study.get_trials()
    verdicts = _replay_verdicts(
        trials, lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    )
    assert [max(t.intermediate_values) if t.state == TrialState.PRUNED else None for t in trials] == verdicts
    assert verdicts[0] is None and 1 in verdicts  # the first trial passed every gate, others stopped
    requeued = [n for n, k in actor.calls if k == 0]
    assert len(requeued) > len(set(requeued))  # a following trial's first step was sent again


def test_a_following_trial_counts_as_asked_ahead(tmp_path):
    c, slot, actor = _coordinator(tmp_path, {"name": "none"}, n_trials=6)
    c.store_thread.start()
    try:
        slot.following = c.store_thread.call(c.ledger.ask)
        c.request_asks()
        assert c.handoff.pending == 0 and not c.handoff.ready()  # one worker, one trial waiting: nothing more asked
        slot.following = None
        c.request_asks()
        c.store_thread.drain()
        assert len(c.handoff.ready()) == 1
    finally:
        c.store_thread.close()
