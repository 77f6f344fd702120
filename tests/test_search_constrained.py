"""``mode = "constrained"``: the study file, the constraint values Optuna stores, and the ranking."""

from __future__ import annotations

import optuna
import pytest

from search.engine.constraint_tracker import ConstraintTracker
from search.study.constrained import constraint_values
from search.study.objective_values import objective_values
from search.study.spec import StudySpecError, spec_from_dict
from search.study.trials import ranked_trials, trial_attr

optuna.logging.set_verbosity(optuna.logging.WARNING)
DS = ("MathVista_PROXY200", "MathVision_PROXY200")


def study_dict(**objectives) -> dict:
    return {
        "name": "c",
        "storage": "sqlite:///:memory:",
        "n_trials": 4,
        "models": {"vlm": "v", "llm": "l", "base": "b"},
        "objectives": {"datasets": list(DS), **objectives},
        "baselines": [{"name": "vlm_alone", "method": "linear", "weight": 0.0}],
    }


def constrained(**kw) -> dict:
    return {"maximize": "MathVision_PROXY200", "baseline": "vlm_alone", "within": 1.0, **kw}


def test_the_study_file_names_target_baseline_and_delta():
    spec = spec_from_dict(study_dict(mode="constrained", constrained=constrained()))
    c = spec.objectives.constrained
    assert (c.maximize, c.baseline, c.within) == ("MathVision_PROXY200", "vlm_alone", 1.0)
    assert spec.directions == ["maximize"]
    # the told value is the maximised dataset's accuracy alone
    assert objective_values({DS[0]: 0.9, DS[1]: 0.3}, spec, DS) == [0.3]


@pytest.mark.parametrize(
    ("objectives", "match"),
    [
        ({"mode": "constrained"}, "objectives.constrained` is required"),
        ({"mode": "constrained", "constrained": constrained(maximize="MMMU")}, "constrained.maximize"),
        (
            {"mode": "constrained", "constrained": constrained(baseline="paper")},
            "not a \\[\\[baselines\\]\\]",
        ),
        ({"mode": "constrained", "constrained": constrained(within=-1)}, "constrained.within"),
        ({"mode": "constrained", "constrained": constrained(delta=1)}, "unknown keys"),
        ({"mode": "weighted", "constrained": constrained()}, "set mode = 'constrained'"),
    ],
)
def test_bad_constrained_fields_fail_naming_the_field(objectives, match):
    with pytest.raises(StudySpecError, match=match):
        spec_from_dict(study_dict(**objectives))


def test_cmaes_is_refused_for_constraints():
    d = study_dict(mode="constrained", constrained=constrained())
    d["sampler"] = {"name": "cmaes"}
    d["space"] = {
        "methods": ["linear"],
        "components": [["attention", "mlp", "norm"]],
        "schedules": ["constant"],
    }
    with pytest.raises(StudySpecError, match="ignores constraints"):
        spec_from_dict(d)


def test_constraints_reach_optuna_at_the_tell_and_rank_infeasible_last():
    spec = spec_from_dict(study_dict(mode="constrained", constrained=constrained(within=2.0)))
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
    )
    tracker = ConstraintTracker(spec, study)
    runs = [  # (baseline, MathVista, MathVision): the first sampled trial ends before the baseline
        (None, 0.40, 0.90),  # MathVista 0.40 < 0.50 - 0.02: infeasible, known only once the baseline ends
        ("vlm_alone", 0.50, 0.20),
        (None, 0.49, 0.60),  # within 2 points: feasible
        (None, 0.45, 0.80),  # infeasible
    ]
    for baseline, vista, vision in runs:
        t = study.ask()
        x = t.suggest_float("x", 0, 1)  # the sampler must run with constraints in the history
        assert 0 <= x <= 1
        scores = {DS[0]: vista, DS[1]: vision}
        t.set_user_attr("scores", scores)
        t.set_user_attr("recipe", {"method": "linear", "weight": x})
        if baseline:
            t.set_user_attr("baseline", baseline)
        tracker.at_tell(study, t, baseline, scores, complete=True)
        study.tell(t, objective_values(scores, spec, DS)[0])
    study.ask()  # TPE with constrained history
    trials = study.get_trials()
    assert trials[0].constraints == {}  # told before the baseline: its values were stored afterwards
    assert trial_attr(study, trials[0], "constraints") == pytest.approx({DS[0]: 0.5 - 0.02 - 0.40})
    assert trials[2].constraints == pytest.approx({DS[0]: 0.5 - 0.02 - 0.49})
    assert trials[3].constraints == pytest.approx(
        constraint_values(scores, {DS[0]: 0.5, DS[1]: 0.2}, spec.objectives.constrained)
    )
    # Optuna's own view: the best feasible trial
    assert study.best_trial.number == 0  # Optuna counts a trial without values feasible; our ranking does not
    assert [t.number for t in ranked_trials(study)] == [2, 1, 0, 3]  # feasible first, each by value


def test_the_7b_study_files_carry_the_constrained_mode_commented_and_it_parses(tmp_path):
    from pathlib import Path

    from search.study.spec import load_spec

    for name in ("qwen25vl7b_qwen25math7b.toml", "llava_next_llama3_8b_dartmath.toml"):
        text = (Path(__file__).parent.parent / "studies" / name).read_text()
        assert '# mode = "constrained"' in text
        on = text.replace('mode = "weighted"\n', "").replace("# mode = \"constrained\"", 'mode = "constrained"')
        on = on.replace("# constrained = {", "constrained = {")
        (tmp_path / name).write_text(on)
        c = load_spec(tmp_path / name).objectives.constrained
        # with proxy_size = 200 the trials' scores name the proxy: the target answers to both names
        assert (c.maximize, c.baseline, c.within) == ("MathVision", "vlm_alone", 1.0)
        assert c.targets == ("MathVision", "MathVision_PROXY200")
