"""search.study.pruners: ``may_prune`` against Optuna's own ``prune``, and ``make_pruner``'s defaults and options."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.study.pruners import make_pruner, may_prune
from search.study.spec import StudySpecError, spec_from_dict

N_STEPS = 8


def _spec(pruner: dict | None = None):
    d = {
        "name": "t",
        "n_trials": 5,
        "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
        "objectives": {"datasets": ["A", "B"]},
    }
    if pruner is not None:
        d["pruner"] = pruner
    return spec_from_dict(d)


def _study(n_complete: int) -> optuna.Study:
    """``n_complete`` COMPLETE trials that reported 0.9 at every step: any trial below them is prunable."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _ in range(n_complete):
        study.add_trial(create_trial(value=0.9, intermediate_values={s: 0.9 for s in range(1, N_STEPS + 1)}))
    return study


def _low_trial(step: int) -> optuna.trial.FrozenTrial:
    """A RUNNING trial that reported 0.1 at steps 1..step (as the coordinator reports: every step, in order)."""
    return create_trial(state=TrialState.RUNNING, intermediate_values={s: 0.1 for s in range(1, step + 1)})


PRUNERS = [
    optuna.pruners.MedianPruner(n_startup_trials=st, n_warmup_steps=wu, interval_steps=iv)
    for st in (0, 1, 2, 5)
    for wu in (0, 1, 2, 3)
    for iv in (1, 2, 3)
] + [
    optuna.pruners.PercentilePruner(pct, n_startup_trials=st, n_warmup_steps=wu, interval_steps=iv)
    for pct in (25.0, 75.0)
    for st in (0, 3)
    for wu in (0, 2)
    for iv in (1, 2)
]


def test_may_prune_agrees_with_optuna_percentile_pruners():
    studies = {n: _study(n) for n in range(7)}
    checked = eligible = 0
    for pruner in PRUNERS:
        for n_complete, study in studies.items():
            for step in range(1, N_STEPS):
                decided = pruner.prune(study, _low_trial(step))
                expected = may_prune(pruner, step, n_complete)
                # the study is built so that every eligible step prunes: the two must agree exactly
                assert decided == expected, (pruner.__class__.__name__, vars(pruner), n_complete, step)
                checked += 1
                eligible += decided
    assert eligible > 0 and eligible < checked  # both outcomes occur


def test_may_prune_other_pruners():
    study = _study(6)
    nop = optuna.pruners.NopPruner()
    assert not any(may_prune(nop, s, 6) for s in range(1, N_STEPS))
    assert not any(nop.prune(study, _low_trial(s)) for s in range(1, N_STEPS))
    # pruners it does not model: always "may"
    sha = optuna.pruners.SuccessiveHalvingPruner()
    assert all(may_prune(sha, s, n) for s in range(1, N_STEPS) for n in (0, 6))
    hb = make_pruner(_spec({"name": "hyperband"}), n_steps=N_STEPS)
    assert may_prune(hb, 1, 0)


def test_make_pruner_defaults():
    default = make_pruner(_spec(), n_steps=8)  # [pruner] absent: successive halving, rungs at 1/4 and 3/4
    assert type(default) is optuna.pruners.SuccessiveHalvingPruner
    assert (default._min_resource, default._reduction_factor) == (2, 3)
    med = make_pruner(_spec({"name": "median"}))
    assert type(med) is optuna.pruners.MedianPruner
    assert (med._n_startup_trials, med._n_warmup_steps, med._interval_steps) == (3, 1, 1)
    assert med._percentile == 50.0
    pct = make_pruner(_spec({"name": "percentile"}))
    assert type(pct) is optuna.pruners.PercentilePruner
    assert (pct._percentile, pct._n_startup_trials, pct._n_warmup_steps) == (25.0, 3, 2)
    # successive halving: first rung after a quarter of the steps, whatever the chunk size
    for n_steps, first_rung in ((8, 2), (4, 1), (20, 5), (3, 1), (None, 1)):
        sha = make_pruner(_spec({"name": "successive_halving"}), n_steps=n_steps)
        assert type(sha) is optuna.pruners.SuccessiveHalvingPruner
        assert (sha._min_resource, sha._reduction_factor, sha._min_early_stopping_rate) == (first_rung, 3, 0)
    # the rungs of the toy study (8 steps): decisions at steps 2 and 6 only
    sha = make_pruner(_spec({"name": "successive_halving"}), n_steps=8)
    assert [s for s in range(1, 8) if may_prune(sha, s, 0)] == [2, 6]
    hb = make_pruner(_spec({"name": "hyperband"}), n_steps=8)
    assert type(hb) is optuna.pruners.HyperbandPruner
    assert (hb._min_resource, hb._max_resource, hb._reduction_factor) == (1, 8, 3)
    assert type(make_pruner(_spec({"name": "none"}))) is optuna.pruners.NopPruner


def test_make_pruner_options_override():
    med = make_pruner(_spec({"name": "median", "options": {"n_warmup_steps": 2, "n_startup_trials": 3}}))
    assert (med._n_startup_trials, med._n_warmup_steps) == (3, 2)
    pct = make_pruner(_spec({"name": "percentile", "options": {"percentile": 40.0, "interval_steps": 2}}))
    assert (pct._percentile, pct._interval_steps, pct._n_startup_trials) == (40.0, 2, 3)
    sha = make_pruner(
        _spec({"name": "successive_halving", "options": {"min_resource": 1, "reduction_factor": 2}}),
        n_steps=8,
    )
    assert (sha._min_resource, sha._reduction_factor) == (1, 2)


@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "median", "options": {"bogus": 1}},  # not a keyword of the pruner
        {"name": "median", "options": {"n_startup_trials": -1}},  # a keyword Optuna rejects the value of
        {"name": "percentile", "options": {"percentile": 150.0}},
        {"name": "successive_halving", "options": {"reduction_factor": 1}},
        {"name": "hyperband", "options": {"bogus": 1}},
    ],
)
def test_make_pruner_bad_options(pruner):
    with pytest.raises(StudySpecError, match=r"pruner\.options"):
        make_pruner(_spec(pruner), n_steps=8)


def test_spec_pruner_names():
    for name in ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "none"):
        assert _spec({"name": name}).pruner.name == name
    with pytest.raises(StudySpecError, match=r"pruner\.name"):
        _spec({"name": "wilcoxon_typo"})


@pytest.mark.parametrize(
    "kw",
    [
        {"min_resource": 1, "reduction_factor": 2},
        {"min_resource": 2, "reduction_factor": 3},
        {"min_resource": 1, "reduction_factor": 3, "min_early_stopping_rate": 1},
        {"min_resource": 3, "reduction_factor": 2},
    ],
)
def test_may_prune_agrees_with_successive_halving(kw):
    """Run as the coordinator does (a report and a decision every step): where ``may_prune`` is False,
    Optuna neither prunes nor records a rung value (so skipping the call would lose nothing); where it is
    True, Optuna records one (a real decision)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.SuccessiveHalvingPruner(**kw)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    profiles = [[0.9] * N_STEPS] * 4 + [[0.95] * 2 + [0.1] * (N_STEPS - 2), [0.1] * N_STEPS]
    decided = undecided = 0
    for values in profiles:
        trial = study.ask()
        state = TrialState.COMPLETE
        for step in range(1, N_STEPS):
            trial.report(values[step - 1], step)
            before = dict(study._storage.get_trial(trial._trial_id).system_attrs)
            pruned = trial.should_prune()
            after = study._storage.get_trial(trial._trial_id).system_attrs
            n_complete = len(study.get_trials(states=(TrialState.COMPLETE,)))
            if may_prune(pruner, step, n_complete):
                assert len(after) == len(before) + 1, (kw, step)
                decided += 1
            else:
                assert not pruned and after == before, (kw, step)
                undecided += 1
            if pruned:
                state = TrialState.PRUNED
                break
        study.tell(trial, values[-1] if state == TrialState.COMPLETE else None, state=state)
    assert decided and undecided
    assert len(study.get_trials(states=(TrialState.PRUNED,))) >= 1


def test_reports_step_writes_what_a_later_decision_reads():
    from search.study.pruners import reports_step

    sha = make_pruner(_spec({"name": "successive_halving"}), n_steps=8)
    assert [s for s in range(1, 8) if reports_step(sha, s, 5)] == [2, 6]  # its rungs only
    med = make_pruner(_spec({"name": "median"}))
    assert all(reports_step(med, s, 0) for s in range(1, 8))  # even before it decides anything
    assert not any(reports_step(make_pruner(_spec({"name": "none"})), s, 9) for s in range(1, 8))


def test_wilcoxon_pruner_choice_and_per_item_reports(tmp_path):
    """``[pruner] name = "wilcoxon"``: Optuna's WilcoxonPruner; the coordinator reports every item of the
    steps done at its index (weighted correctness), and the pruner pairs them with the best trial's."""
    from search.engine.coordinator import Coordinator
    from search.study.resolve import Resolved

    w = make_pruner(_spec({"name": "wilcoxon", "options": {"p_threshold": 0.05}}), n_steps=4)
    assert type(w) is optuna.pruners.WilcoxonPruner and w._p_threshold == 0.05
    assert make_pruner(_spec({"name": "wilcoxon"}))._n_startup_steps == 2
    with pytest.raises(StudySpecError, match=r"pruner\.options"):
        make_pruner(_spec({"name": "wilcoxon", "options": {"bogus": 1}}))
    spec = spec_from_dict(
        {
            "name": "w",
            "storage": f"sqlite:///{tmp_path}/w.db",
            "output_dir": str(tmp_path / "out"),
            "n_trials": 5,
            "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
            "objectives": {"datasets": ["A", "B"], "weights": {"A": 3.0, "B": 1.0}},
            "pruner": {"name": "wilcoxon"},
        }
    )
    c = Coordinator(spec, Resolved("/m/v", "/m/l", "/m/b", ("A", "B"), None), live=False)
    c.open()
    c.use_workers([], [[["A", 2], ["B", 1]], [["A", 2], ["B", 1]]], ("A", "B"))
    r = c.ledger.ask()
    assert r is not None
    r.records = [{"dataset": d, "correct": ok} for d, ok in [("A", 1), ("A", 0), ("B", 1), ("A", 1)]]
    c.ledger.report(r, 1, 0.0)  # step 1: its 3 items
    # weights 3 and 1, mean 2: a correct A item counts 1.5, a correct B item 0.5
    assert c.study.trials[r.trial.number].intermediate_values == {0: 1.5, 1: 0.0, 2: 0.5}
    r.records += [{"dataset": "A", "correct": 0}, {"dataset": "B", "correct": 1}]
    c.ledger.report(r, 2, 0.0)
    assert c.study.trials[r.trial.number].intermediate_values == {0: 1.5, 1: 0.0, 2: 0.5, 3: 1.5, 4: 0.0, 5: 0.5}
