"""Baselines as points of the space, and warm starts: what the sampler knows besides its own trials.

Coordinator bookkeeping without workers (as tests/test_search_resume.py): the baselines are enqueued by
``Coordinator.open`` and asked by ``StudyLedger.ask``; values are told directly.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from merge_core import Recipe
from search.engine.coordinator import Coordinator
from search.engine.recipe_cache import cache_key
from search.study.baseline_points import OUTSIDE_ATTR
from search.study.known_points import status_lines
from search.study.resolve import Resolved
from search.study.spec import StudySpecError, spec_from_dict
from search.study.trials import ranked_trials

RES = Resolved("/m/vlm", "/m/llm", "/m/base", ("A", "B"), None)
SPACE = {
    "methods": ["linear", "task_arithmetic"],
    "components": [["attention", "mlp", "norm"], ["attention"]],
    "schedules": ["constant", "step"],
    "start": [0, 3],
}
BASELINES = [
    {"name": "vlm_alone", "method": "linear", "weight": 0.0},
    {"name": "llm_lm_in_vlm", "method": "linear", "weight": 1.0},
    # the space does not search `normalize`: a fixed recipe
    {"name": "ta_normalized", "method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.0, "normalize": True},
    # outside the range of llm_weight ([0, 1.5])
    {"name": "ta_far", "method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.8},
]


def _spec(tmp_path, **over):
    d = {
        "name": "points",
        "storage": f"sqlite:///{tmp_path}/s.db",
        "output_dir": str(tmp_path / "out"),
        "n_trials": 10,
        "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
        "objectives": {"datasets": ["A", "B"]},
        "space": SPACE,
        "baselines": BASELINES,
    }
    d.update(over)
    return spec_from_dict(d)


class RecordingSampler(optuna.samplers.BaseSampler):
    """Samples the first choice / the low end, and records the COMPLETE trials it saw at each draw."""

    def __init__(self) -> None:
        self.seen: list[list[tuple[dict, float | None]]] = []

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        self.seen.append([(dict(t.params), t.value) for t in done])
        if isinstance(param_distribution, CategoricalDistribution):
            return param_distribution.choices[-1]
        return param_distribution.high


def _full(method: str, **fields) -> dict:
    """A recipe written out by hand with every default merge_core fills in."""
    d = {"vlm": "/m/vlm", "llm": "/m/llm", "base": "/m/base", "method": method, "seed": 0}
    d.update(fields)
    d.setdefault("components", ["attention", "mlp", "norm"])
    d.setdefault("schedule", {"shape": "constant"})
    return d


def test_baselines_in_the_space_carry_params_and_the_sampler_reads_them(tmp_path):
    c = Coordinator(_spec(tmp_path), RES, live=False)
    study = c.open()
    sampler = study.sampler = RecordingSampler()
    assert study.user_attrs[OUTSIDE_ATTR].keys() == {"ta_normalized", "ta_far"}
    assert "llm_weight = 1.8 is outside" in study.user_attrs[OUTSIDE_ATTR]["ta_far"]
    assert "normalize" in study.user_attrs[OUTSIDE_ATTR]["ta_normalized"]
    values = {"vlm_alone": 0.30, "llm_lm_in_vlm": 0.45, "ta_normalized": 0.20, "ta_far": 0.10}
    told = {}
    for _ in range(4):
        r = c.ledger.ask()
        assert r is not None and r.baseline in values
        # what runs is the baseline's own recipe, whether or not it is a point of the space
        assert r.recipe_id == Recipe.from_dict(r.recipe).id
        study.tell(r.trial, values[r.baseline])
        told[r.baseline] = r
    assert sampler.seen == []  # every baseline parameter was fixed: nothing was sampled for them
    stored = {t.user_attrs["baseline"]: t for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert stored["vlm_alone"].params == {
        "method": "linear", "weight": 0.0, "components": "attention+mlp+norm", "schedule": "constant"
    }  # fmt: skip
    assert stored["llm_lm_in_vlm"].params["weight"] == 1.0
    assert stored["ta_normalized"].params == {}  # a fixed recipe: the sampler cannot place it
    assert told["vlm_alone"].recipe_id == Recipe.from_dict(_full("linear", weight=0.0)).id
    assert told["ta_normalized"].recipe["normalize"] is True
    # the next (sampled) trial: the sampler's draws see the two in-space baselines as points with values
    nxt = c.ledger.ask()
    assert nxt is not None and nxt.baseline is None and sampler.seen
    assert ({"method": "linear", "weight": 0.0, "components": "attention+mlp+norm", "schedule": "constant"}, 0.30) in sampler.seen[0]
    assert ({"method": "linear", "weight": 1.0, "components": "attention+mlp+norm", "schedule": "constant"}, 0.45) in sampler.seen[0]
    assert ({}, 0.20) in sampler.seen[0]  # the fixed recipe is a trial without a place in the space
    line = status_lines(study)[0]
    assert "the sampler learns from them): vlm_alone, llm_lm_in_vlm" in line
    assert "ta_normalized (the space does not search normalize = True)" in line and "ta_far" in line


def test_a_sampled_trial_equal_to_a_baseline_reuses_its_result(tmp_path):
    c = Coordinator(_spec(tmp_path, baselines=BASELINES[:1]), RES, live=False)
    study = c.open()
    base = c.ledger.ask()
    assert base is not None
    study.tell(base.trial, 0.3)
    c.ledger.recipe_cache[cache_key(base.recipe_id, c.ledger.scoring_key)] = base.trial_id  # as the ledger's finish
    study.enqueue_trial(dict(study.trials[base.trial.number].params))  # the same point, not a baseline
    again = c.ledger.ask()  # told from the cache; the next one runs
    cached = [t for t in study.get_trials() if "cached_from" in t.user_attrs]
    assert [t.user_attrs["cached_from"] for t in cached] == [base.trial.number]
    assert cached[0].value == 0.3 and cached[0].user_attrs["recipe_id"] == base.recipe_id
    assert again is not None and again.trial.number == cached[0].number + 1


def _source_study(path) -> str:
    url = f"sqlite:///{path}"
    src = optuna.create_study(study_name="cheap", storage=url, direction="maximize")
    method = CategoricalDistribution(["linear", "task_arithmetic", "ties"])  # a wider space than this one
    comps = CategoricalDistribution(["attention+mlp+norm", "attention"])
    sched = CategoricalDistribution(["constant", "step"])
    w = FloatDistribution(0.0, 1.5)
    fits = {"method": "task_arithmetic", "vlm_weight": 0.5, "llm_weight": 1.0,
            "components": "attention+mlp+norm", "schedule": "constant"}  # fmt: skip
    trials = [
        create_trial(params=fits, distributions={"method": method, "vlm_weight": w, "llm_weight": w,
                     "components": comps, "schedule": sched}, value=0.61),  # fmt: skip
        # llm_weight drawn from a wider range there: 1.8 lies outside this space
        create_trial(params={**fits, "llm_weight": 1.8}, distributions={"method": method, "vlm_weight": w,
                     "llm_weight": FloatDistribution(0.0, 2.0), "components": comps, "schedule": sched},
                     value=0.55),  # fmt: skip
        # a method this space does not offer
        create_trial(params={**fits, "method": "ties", "density": 0.5}, distributions={
            "method": method, "vlm_weight": w, "llm_weight": w,
            "density": FloatDistribution(0.1, 1.0), "components": comps, "schedule": sched}, value=0.7),  # fmt: skip
        create_trial(params=fits, distributions={"method": method, "vlm_weight": w, "llm_weight": w,
                     "components": comps, "schedule": sched}, state=TrialState.PRUNED,
                     intermediate_values={1: 0.2}),  # fmt: skip
    ]
    src.add_trials(trials)
    return url


def test_warm_start_adds_fitting_trials_once_and_reports_the_rest(tmp_path):
    url = _source_study(tmp_path / "cheap.db")
    spec = _spec(tmp_path, baselines=[], warm_start=[{"storage": url, "study": "cheap"}])
    c = Coordinator(spec, RES, live=False)
    events = []
    c.panel.event = events.append
    study = c.open()
    warm = [t for t in study.get_trials() if "warm_start" in t.user_attrs]
    assert [(t.user_attrs["warm_start"], t.value, t.params["llm_weight"]) for t in warm] == [("cheap#0", 0.61, 1.0)]
    assert warm[0].distributions["llm_weight"] == FloatDistribution(0.0, 1.5)  # this space's distributions
    (line,) = [e for e in events if e.startswith("warm start")]
    assert "1 trial(s) added, 2 skipped" in line
    assert "trial 1: llm_weight = 1.8 is outside" in line and "trial 2:" in line and "ties" in line
    assert c.spec.n_trials == 11  # the study's own 10 trials still run
    assert ranked_trials(study) == []  # a known point, not a result of this study: never "best"
    assert any("1 added, 2 skipped" in x for x in status_lines(study))
    # a resumed study adds nothing twice
    c2 = Coordinator(spec, RES, live=False)
    c2.open()
    assert sum("warm_start" in t.user_attrs for t in c2.study.get_trials()) == 1
    # the sampler sees the warm point: TPE's first sampled trial after start-up reads it
    r = c.ledger.ask()
    assert r is not None and r.trial.number == 1


def test_warm_start_spec_errors(tmp_path):
    with pytest.raises(StudySpecError, match=r"warm_start\[0\]"):
        _spec(tmp_path, warm_start=[{"storage": "sqlite:///x.db"}])
    with pytest.raises(StudySpecError, match=r"warm_start\[0\].storage"):
        _spec(tmp_path, warm_start=[{"storage": "x.db", "study": "a"}])
    from search.study.warm_start import WarmStartError

    spec = _spec(tmp_path, warm_start=[{"storage": f"sqlite:///{tmp_path}/none.db", "study": "nope"}])
    with pytest.raises(WarmStartError, match="no study 'nope'"):
        Coordinator(spec, RES, live=False).open()
