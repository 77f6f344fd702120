"""search.study.pruners' own rules against Optuna's pruners of the same arguments, on identical random histories.

The reference is Optuna itself, through its public API: a study with the pruner, trials asked, reported and
told, ``trial.should_prune()`` after each report, and the rung records Optuna stores. Our rules see only what
the test itself keeps (each trial's reports and the rung records our rule made), never the Optuna study.
"""

from __future__ import annotations

import math
import random
import zlib

import optuna
import pytest
from optuna.trial import TrialState

from search.study.optuna_private import pruner_arguments
from search.study.pruners import (
    RUNG_PREFIX,
    PercentileRule,
    SuccessiveHalvingRule,
    make_pruner,
    rule_of,
)
from search.study.spec import spec_from_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _values(rng: random.Random, level: float, nan_rate: float) -> float:
    return float("nan") if rng.random() < nan_rate else min(1.0, max(0.0, level + rng.gauss(0, 0.15)))


SHA_CASES = [
    dict(min_resource=r, reduction_factor=eta, min_early_stopping_rate=s, bootstrap_count=b)
    for r, eta, s, b in [
        (1, 2, 0, 0),
        (1, 3, 0, 0),
        (2, 3, 0, 0),
        (1, 3, 1, 0),
        (1, 4, 0, 0),
        (3, 2, 0, 0),
        (1, 2, 0, 3),
        (2, 2, 1, 2),
    ]
]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize("kw", SHA_CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_asha_rule_equals_optunas_successive_halving(kw, direction):
    """Up to 4 trials run at once, their reports interleaved at random (asynchronous), each report at the
    next step or a few steps on (a trial can pass several rungs in one report), some values NaN, some trials
    failed midway: every verdict and every rung record of our rule equals Optuna's."""
    rng = random.Random(zlib.crc32(repr((kw, direction)).encode()))  # the same histories in every run
    study = optuna.create_study(direction=direction, pruner=optuna.pruners.SuccessiveHalvingPruner(**kw))
    rule = SuccessiveHalvingRule(**kw)
    maximize = direction == "maximize"
    records: dict[int, dict[str, float]] = {}  # ours: trial number → its rung records
    running: list[tuple[optuna.trial.Trial, float, list[int]]] = []
    verdicts = {True: 0, False: 0}
    started = 0
    while started < 120 or running:
        while started < 120 and len(running) < 4:
            running.append((study.ask(), rng.random(), [0]))
            records[running[-1][0].number] = {}
            started += 1
        i = rng.randrange(len(running))
        trial, level, last = running[i]
        step = last[0] + (1 if rng.random() < 0.7 else rng.randint(2, 5))
        last[0] = step
        value = _values(rng, level, 0.03)
        trial.report(value, step)
        theirs = trial.should_prune()
        others = [r for n, r in records.items() if n != trial.number]
        mine, made = rule.prune(step, value, records[trial.number], others, maximize)
        records[trial.number].update(made)
        assert mine == theirs, (kw, direction, trial.number, step)
        stored = {
            k: v for k, v in study.trials[trial.number].system_attrs.items() if k.startswith(RUNG_PREFIX)
        }
        assert stored.keys() == records[trial.number].keys()
        assert stored == records[trial.number]
        verdicts[mine] += 1
        if mine:
            study.tell(trial, state=TrialState.PRUNED)
        elif rng.random() < 0.03:
            study.tell(trial, state=TrialState.FAIL)  # its rung records still count (Optuna reads all states)
        elif step >= 20:
            study.tell(trial, value if not math.isnan(value) else 0.0)
        else:
            continue
        running.pop(i)
    assert verdicts[True] > 10 and verdicts[False] > 50  # both verdicts, many times


PERCENTILE_CASES = [
    (
        optuna.pruners.MedianPruner,
        dict(n_startup_trials=st, n_warmup_steps=wu, interval_steps=iv, n_min_trials=nm),
    )
    for st, wu, iv, nm in [(0, 0, 1, 1), (3, 1, 1, 1), (5, 2, 2, 1), (2, 0, 3, 4)]
] + [
    (
        optuna.pruners.PercentilePruner,
        dict(percentile=p, n_startup_trials=st, n_warmup_steps=wu, interval_steps=iv, n_min_trials=nm),
    )
    for p, st, wu, iv, nm in [(25.0, 3, 2, 1, 1), (75.0, 0, 0, 2, 2), (10.0, 1, 1, 1, 3), (90.0, 4, 0, 1, 1)]
]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize(
    "cls,kw", PERCENTILE_CASES, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(PERCENTILE_CASES)]
)
def test_percentile_rule_equals_optunas_percentile_and_median(cls, kw, direction):
    """Trials report at random steps (gaps, repeats skipped, NaN values), some are pruned or failed, the rest
    complete; after every report our rule (the trial's reports and the COMPLETE trials' reports, as the test
    keeps them) gives Optuna's verdict."""
    rng = random.Random(zlib.crc32(repr((cls.__name__, kw, direction)).encode()))
    pruner = cls(**kw)
    study = optuna.create_study(direction=direction, pruner=pruner)
    rule = PercentileRule(**({"percentile": 50.0} | kw))
    maximize = direction == "maximize"
    completed: list[dict[int, float]] = []
    verdicts = {True: 0, False: 0}
    for _ in range(80):
        trial = study.ask()
        level = rng.random()
        reports: dict[int, float] = {}
        step, end = 0, rng.randint(3, 10)
        state = TrialState.COMPLETE
        while step < end:
            step += 1 if rng.random() < 0.8 else 2
            reports[step] = _values(rng, level, 0.05)
            trial.report(reports[step], step)
            mine = rule.prune(reports, completed, maximize)
            assert mine == trial.should_prune(), (cls.__name__, kw, direction, trial.number, step)
            verdicts[mine] += 1
            if mine:
                state = TrialState.PRUNED
                break
        if state == TrialState.COMPLETE and rng.random() < 0.05:
            state = TrialState.FAIL
        if state == TrialState.COMPLETE:
            study.tell(trial, level)
            completed.append(dict(reports))
        else:
            study.tell(trial, state=state)
    assert verdicts[True] > 5 and verdicts[False] > 30


def _spec(pruner: dict):
    return spec_from_dict(
        {
            "name": "t",
            "n_trials": 5,
            "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
            "objectives": {"datasets": ["A", "B"]},
            "pruner": pruner,
        }
    )


@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "successive_halving"},
        {"name": "successive_halving", "options": {"min_resource": "auto", "reduction_factor": 2}},
        {"name": "successive_halving", "options": {"min_early_stopping_rate": 1, "bootstrap_count": 2}},
        {"name": "median"},
        {"name": "median", "options": {"n_min_trials": 3, "interval_steps": 2}},
        {"name": "percentile"},
        {"name": "percentile", "options": {"percentile": 60.0, "n_startup_trials": 0}},
    ],
)
def test_the_rule_make_pruner_records_is_the_one_optuna_holds(pruner):
    """The arguments make_pruner kept for our rule (with Optuna's defaults filled in from its signature) are
    the ones Optuna's pruner holds: the two ways of getting a rule (a pruner make_pruner built, and one built
    elsewhere) agree."""
    p = make_pruner(_spec(pruner), n_steps=8)
    ours = rule_of(p)
    held = pruner_arguments(p)
    assert ours is not None and held is not None
    assert ours == type(ours)(**held)
    assert rule_of(make_pruner(_spec({"name": "hyperband"}), n_steps=8)) is None
    assert rule_of(make_pruner(_spec({"name": "wilcoxon"}))) is None


def test_auto_min_resource_in_the_view_equals_optuna():
    """``min_resource = "auto"``: no decision until a trial completes, then rungs from its last step; the
    coordinator's view (search.engine.prune_view) gives Optuna's verdicts and rung records."""
    from search.engine.prune_view import StudyView
    from search.study.optuna_private import trial_id

    rng = random.Random(5)
    ref = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner())
    twin = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner())
    view = StudyView(twin, max_age_s=0.0)
    pruned = 0
    for n in range(60):
        a, b = ref.ask(), twin.ask()
        level = rng.random()
        attrs: dict = {}
        values: dict[int, float] = {}
        for step in range(1, (250 if n == 0 else 40) + 1):  # the first trial sets "auto" to 250 // 100 = 2
            values[step] = _values(rng, level, 0.0)
            a.report(values[step], step)
            b.report(values[step], step)
            mine = view.decide(twin.pruner, b.number, trial_id(b), values, attrs)
            view.flush()
            assert mine == a.should_prune(), (n, step)
            if mine:
                pruned += 1
                ref.tell(a, state=TrialState.PRUNED)
                twin.tell(b, state=TrialState.PRUNED)
                break
        else:
            ref.tell(a, level)
            twin.tell(b, level)
        assert twin.trials[-1].system_attrs == ref.trials[-1].system_attrs == attrs
    assert pruned > 10
