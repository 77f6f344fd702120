"""Coordinator bookkeeping without workers: orphan recovery, baselines once, budget and surplus rules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.engine.coordinator import Coordinator, objective_values, running_scores
from search.engine.recipe_cache import cache_key
from search.study.resolve import Resolved
from search.study.spec import spec_from_dict

RES = Resolved("/m/vlm", "/m/llm", "/m/base", ("A", "B"), None)


def _spec(tmp_path, **over):
    d = {
        "name": "resume",
        "storage": f"sqlite:///{tmp_path}/s.db",
        "output_dir": str(tmp_path / "out"),
        "n_trials": 4,
        "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
        "objectives": {"datasets": ["A", "B"], "weights": {"A": 3.0, "B": 1.0}},
        "space": {"methods": ["task_arithmetic"]},
        "baselines": [{"name": "vlm_alone", "method": "linear", "weight": 0.0}],
    }
    d.update(over)
    return spec_from_dict(d)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_scores_and_objective_formula(tmp_path):
    spec = _spec(tmp_path)
    recs = [{"dataset": "A", "correct": c} for c in (True, False, True, True)] + [
        {"dataset": "B", "correct": c} for c in (False, True)
    ]
    scores = running_scores(recs, ("A", "B"))
    assert scores == {"A": 0.75, "B": 0.5}
    # weighted mean with weights 3 and 1, computed by hand
    assert objective_values(scores, spec, ("A", "B")) == [pytest.approx((3 * 0.75 + 1 * 0.5) / 4)]
    assert objective_values({"A": 0.75}, spec, ("A", "B")) == [
        pytest.approx(0.75)
    ]  # only datasets seen so far
    multi = _spec(tmp_path, objectives={"datasets": ["A", "B"], "mode": "multi"}, pruner={"name": "none"})
    assert objective_values(scores, multi, ("A", "B")) == [0.75, 0.5]


def test_baselines_enqueued_once_and_first(tmp_path):
    spec = _spec(tmp_path)
    c1 = Coordinator(spec, RES, live=False)
    study = c1.open()
    c2 = Coordinator(spec, RES, live=False)
    c2.open()
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["baseline"] for t in waiting] == ["vlm_alone"]
    first = c1.ledger.ask()
    assert first is not None and first.label == "vlm_alone"
    assert first.recipe["method"] == "linear" and first.recipe["weight"] == 0.0
    assert first.recipe["vlm"] == "/m/vlm"  # the resolved models, not the study file's ids
    second = c1.ledger.ask()
    assert second is not None and second.recipe["method"] == "task_arithmetic"
    stored = c1.study.trials[second.trial.number]  # the store's copy, not the Trial object's
    assert stored.user_attrs["recipe_id"] == second.recipe_id and stored.user_attrs["coordinator"] == c1.id


def test_orphans_of_a_dead_coordinator_are_failed_and_requeued(tmp_path):
    spec = _spec(tmp_path, baselines=[])
    study = optuna.create_study(study_name="resume", storage=spec.storage, direction="maximize")
    dead = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
    study.set_user_attr(
        f"coordinator/{dead}",
        {"host": socket.gethostname(), "pid": int(dead.split(":")[1]), "beat": time.time()},
    )
    done = study.ask({"vlm_weight": optuna.distributions.FloatDistribution(0, 1.5)})
    study.tell(done, 0.5)
    orphan = study.ask(
        {
            "vlm_weight": optuna.distributions.FloatDistribution(0, 1.5),
            "llm_weight": optuna.distributions.FloatDistribution(0, 1.5),
        }
    )
    orphan.set_user_attr("coordinator", dead)
    # a RUNNING trial of a live coordinator elsewhere (fresh heartbeat) must be left alone
    alive = "otherhost:1:cafe"
    study.set_user_attr(f"coordinator/{alive}", {"host": "otherhost", "pid": 1, "beat": time.time()})
    busy = study.ask({"vlm_weight": optuna.distributions.FloatDistribution(0, 1.5)})
    busy.set_user_attr("coordinator", alive)

    c = Coordinator(spec, RES, live=False)
    c.open()
    trials = {t.number: t for t in c.study.get_trials()}
    assert trials[done.number].state == TrialState.COMPLETE  # never re-run
    assert trials[orphan.number].state == TrialState.FAIL
    assert "orphaned" in trials[orphan.number].user_attrs["fail_reason"]
    assert trials[busy.number].state == TrialState.RUNNING
    waiting = [t for t in trials.values() if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == orphan.number
    # the retry runs with exactly the orphan's parameters
    nxt = c.ledger.ask()
    assert nxt is not None and nxt.trial.params == orphan.params
    assert nxt.recipe["vlm_weight"] == orphan.params["vlm_weight"]

    # a stale heartbeat on another host counts as dead too
    c.ledger.grace_s = 0.0
    assert busy.number in c.ledger.recover_orphans()


def test_budget_counts_running_and_surplus_loses(tmp_path):
    spec = _spec(tmp_path, baselines=[], n_trials=2)
    c = Coordinator(spec, RES, live=False)
    c.open()
    a, b = c.ledger.ask(), c.ledger.ask()
    assert a is not None and b is not None
    assert c.ledger.ask() is None and c.ledger.stop == "n_trials reached"  # 2 RUNNING fill the budget
    # a third trial asked in a race (another coordinator) is the surplus one: higher number loses
    t3 = c.study.ask()
    assert c.ledger.surplus(t3.number) and not c.ledger.surplus(b.trial.number)


def test_surplus_reads_the_store_only_where_the_budget_could_be_overfilled(tmp_path, monkeypatch):
    spec = _spec(tmp_path, baselines=[], n_trials=10)
    c = Coordinator(spec, RES, live=False)
    c.open()
    c.ledger.last_counted = 9  # near the end of the budget: the count alone would not settle it
    reads = []
    real = c.study.get_trials
    monkeypatch.setattr(c.study, "get_trials", lambda *a, **k: reads.append(1) or real(*a, **k))
    # trial 9 has 9 trials before it, whatever their states: fewer than n_trials, so it cannot be surplus
    assert not c.ledger.surplus(9) and reads == []
    first = [c.study.ask() for _ in range(10)]
    assert c.ledger.surplus(10) and reads == [1]  # trials 0-9 RUNNING fill the budget: 10 is surplus
    c.study.tell(first[0], state=TrialState.FAIL)  # a failed trial frees its place
    assert not c.ledger.surplus(10) and reads == [1, 1]


@pytest.mark.parametrize("enqueued", [False, True])
def test_tally_takes_the_last_asks_read_with_the_asked_trial_counted(tmp_path, monkeypatch, enqueued):
    baselines = [{"name": "vlm_alone", "method": "linear", "weight": 0.0}] if enqueued else []
    spec = _spec(tmp_path, baselines=baselines, n_trials=10)
    c = Coordinator(spec, RES, live=False)
    c.open()
    # another coordinator's finished trial, and one of its running ones (an ask would take the baseline)
    c.study.add_trial(optuna.trial.create_trial(value=0.5))
    c.study._storage.create_new_trial(c.study._study_id)
    nxt = c.ledger.ask()  # the enqueued baseline (WAITING in the ask's read) or a new trial
    assert nxt is not None and (nxt.baseline == "vlm_alone") == enqueued
    reads = []
    real = c.study.get_trials
    monkeypatch.setattr(c.study, "get_trials", lambda *a, **k: reads.append(1) or real(*a, **k))
    c.ledger.refresh()
    assert reads == []  # the ask's read served
    shown = (c.tally.complete, c.tally.running, c.tally.waiting, c.ledger.last_counted, c.tally.best)
    c.ledger.refresh()  # that read serves once: the next tally reads the store
    assert reads == [1]
    fresh = (c.tally.complete, c.tally.running, c.tally.waiting, c.ledger.last_counted, c.tally.best)
    assert shown == fresh == (1, 2, 0, 3, 0.5)


def test_invalid_baseline_fails_with_reason_and_study_goes_on(tmp_path):
    spec = _spec(tmp_path, baselines=[{"name": "bad", "method": "linear", "weight": 0.5, "density": 0.3}])
    c = Coordinator(spec, RES, live=False)
    c.open()
    nxt = c.ledger.ask()
    assert nxt is not None and nxt.recipe["method"] == "task_arithmetic"
    failed = c.study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and "density" in failed[0].user_attrs["fail_reason"]


def test_same_recipe_is_not_scored_twice(tmp_path):
    spec = _spec(
        tmp_path,
        baselines=[],
        n_trials=3,
        space={"methods": ["task_arithmetic"], "vlm_weight": 0.5, "llm_weight": 1.0},
    )
    c = Coordinator(spec, RES, live=False)
    c.open()
    first = c.ledger.ask()
    first.trial.set_user_attr("scores", {"A": 0.5})
    c.study.tell(first.trial, 0.5)
    c.ledger.recipe_cache[cache_key(first.recipe_id, c.ledger.scoring_key)] = c.study.trials[first.trial.number]
    again = c.ledger.ask()  # the fixed space can only produce the same recipe: reused, not re-run
    assert again is None or again.recipe_id != first.recipe_id
    reused = [t for t in c.study.get_trials() if t.user_attrs.get("cached_from") == first.trial.number]
    assert reused and all(t.value == 0.5 and t.state == TrialState.COMPLETE for t in reused)
    assert os.path.exists(tmp_path / "s.db")


def test_progress_panel_shows_counts_best_rate_and_eta():
    from rich.console import Console

    from search.engine.progress import ProgressView, Tally

    t = Tally(
        complete=6,
        pruned=2,
        failed=1,
        running=2,
        waiting=1,
        best=0.6125,
        best_trial=7,
        best_label="ties",
        n_trials=20,
    )
    t.started -= 3600.0  # one hour ago, 8 finished here → 8 trials/h, 12 left → 1.5 h
    t.finished_here = 8
    console = Console(record=True, width=120)
    console.print(ProgressView(console, live=False).render(t))
    text = console.export_text()
    assert "8/20 done (6 complete, 2 pruned), 2 running, 1 failed, 1 queued" in text
    assert "0.6125 (trial 7) ties" in text
    assert "8.0 trials/h" in text and "ETA 1h30m" in text
