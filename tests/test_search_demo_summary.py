"""``make demo``'s closing summary names the best baseline and the best recipe the search found.

Runs the demo function itself (studies/toy.toml on the "ci" toy world, small budget, one worker) and checks
the printed lines against the study it wrote, read back independently through Optuna.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from rich.console import Console

from objectives.toy.fingerprint import weights_fingerprint
from search.cli.demo import run_demo


def test_demo_prints_best_baseline_and_best_searched_recipe(toy_world_ci, tmp_path):
    console = Console(record=True, width=240)
    out = tmp_path / "demo"
    res = run_demo(size="ci", workers=1, n_trials=6, output_dir=str(out), console=console)
    text = console.export_text()
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and "recipe" in t.user_attrs]
    bases = [t for t in done if t.user_attrs.get("baseline")]
    typed = {t.user_attrs["recipe_id"] for t in bases}  # a baseline's recipe drawn again is not a find
    sampled = [t for t in done if not t.user_attrs.get("baseline") and t.user_attrs["recipe_id"] not in typed]
    assert {t.user_attrs["baseline"] for t in bases} == {"vlm_alone", "llm_lm_in_vlm"}
    ref = next(t for t in bases if t.user_attrs["baseline"] == "vlm_alone").value
    best_base = max(bases, key=lambda t: (t.value, -t.number))
    (line,) = [x for x in text.splitlines() if x.startswith("best baseline:")]
    assert (
        f"trial {best_base.number} ({best_base.user_attrs['baseline']}): proxy {best_base.value:.4f}" in line
    )
    # the gain is paired on the same items: its point estimate is the difference of the two proxy scores
    assert f"{100 * (best_base.value - ref):+.1f} [" in line and "over the VLM alone (paired, 95%)" in line
    (line,) = [x for x in text.splitlines() if x.startswith("best found by the search:")]
    if sampled:
        best = max(sampled, key=lambda t: (t.value, -t.number))
        assert f"trial {best.number} ({best.user_attrs['recipe']['method']}" in line
        assert f"proxy {best.value:.4f}, {100 * (best.value - ref):+.1f} [" in line
        assert "over the VLM alone (paired, 95%)" in line
        assert res["best_searched"] == best.number
    else:  # every sampled trial pruned: said so
        assert "none COMPLETE" in line
    # the baselines are points of the toy space: the sampler learned from both
    assert all(t.params for t in bases)
    assert weights_fingerprint(toy_world_ci.root)[:16] in text


# --- the summary's choices on hand-made studies (no world, no run): each case one way the lines can lie


def _recipe(method: str, **fields: float) -> dict:
    return {
        "schema": "mergesearch.recipe/v2",
        "vlm": "v",
        "llm": "l",
        "base": "b",
        "method": method,
        **fields,
    }


def _add(study, value: float | None, recipe: dict, rid: str, state=TrialState.COMPLETE, **attrs) -> int:
    study.add_trial(
        optuna.trial.create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None,
            user_attrs={"recipe": recipe, "recipe_id": rid, **attrs},
        )
    )  # fmt: skip
    return len(study.trials) - 1


def _study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize")


def _lines(study) -> tuple[str, str]:
    from search.cli.demo_summary import best_lines

    base, searched = best_lines(study)
    assert base.startswith("best baseline:") and searched.startswith("best found by the search:")
    return base, searched


def test_best_trial_a_baseline_still_names_the_best_sampled_one():
    s = _study()
    _add(s, 0.30, _recipe("task_arithmetic", vlm_weight=1.0, llm_weight=0.0), "r0", baseline="vlm_alone")
    b = _add(s, 0.80, _recipe("task_arithmetic", vlm_weight=0.5, llm_weight=1.0), "r1", baseline="ta_best")
    _add(s, 0.60, _recipe("ties", vlm_weight=0.7, llm_weight=0.9, density=0.5), "r2")
    best = _add(s, 0.72, _recipe("dare_linear", vlm_weight=0.6, llm_weight=1.1, density=0.4), "r3")
    base, searched = _lines(s)
    assert f"trial {b} (ta_best): proxy 0.8000, +50.0 points over the VLM alone" in base
    assert f"trial {best} (dare_linear vlm_weight=0.6 llm_weight=1.1 density=0.4): proxy 0.7200" in searched
    assert searched.endswith("+42.0 points over the VLM alone")


def test_a_baseline_recipe_drawn_again_is_not_the_search_s_answer():
    # the recipe cache tells a sampled trial that redraws a baseline's recipe the baseline's value: the best
    # sampled trial by value, yet the user typed that recipe in
    s = _study()
    _add(s, 0.30, _recipe("task_arithmetic", vlm_weight=1.0, llm_weight=0.0), "r0", baseline="vlm_alone")
    b = _add(
        s, 0.55, _recipe("task_arithmetic", vlm_weight=0.0, llm_weight=1.0), "r1", baseline="llm_lm_in_vlm"
    )
    _add(s, 0.55, _recipe("task_arithmetic", vlm_weight=0.0, llm_weight=1.0), "r1", cached_from=b)
    found = _add(s, 0.50, _recipe("ties", vlm_weight=0.5, llm_weight=1.0, density=0.5), "r2")
    _, searched = _lines(s)
    assert f"trial {found} (ties " in searched and "+20.0 points" in searched
    # only the baselines' redraws: nothing the search found itself
    s = _study()
    _add(s, 0.30, _recipe("task_arithmetic", vlm_weight=1.0, llm_weight=0.0), "r0", baseline="vlm_alone")
    _add(s, 0.30, _recipe("task_arithmetic", vlm_weight=1.0, llm_weight=0.0), "r0", cached_from=0)
    _, searched = _lines(s)
    assert "none COMPLETE" in searched and "trial" not in searched


def test_every_sampled_trial_pruned_or_failed():
    s = _study()
    _add(s, 0.30, _recipe("task_arithmetic", vlm_weight=1.0, llm_weight=0.0), "r0", baseline="vlm_alone")
    _add(s, 0.40, _recipe("task_arithmetic", vlm_weight=0.0, llm_weight=1.0), "r1", baseline="llm_lm_in_vlm")
    _add(s, None, _recipe("ties", vlm_weight=0.5, llm_weight=1.0, density=0.5), "r2", state=TrialState.PRUNED)
    _add(s, None, _recipe("ties", vlm_weight=0.6, llm_weight=1.0, density=0.5), "r3", state=TrialState.FAIL)
    base, searched = _lines(s)
    assert "trial 1 (llm_lm_in_vlm): proxy 0.4000, +10.0 points over the VLM alone" in base
    assert "none COMPLETE" in searched and "trial" not in searched


def test_reference_missing_or_best_baseline_itself():
    # the VLM alone is the best baseline: no "+0.0" gain over itself
    s = _study()
    _add(s, 0.45, _recipe("task_arithmetic", vlm_weight=1.0, llm_weight=0.0), "r0", baseline="vlm_alone")
    _add(s, 0.40, _recipe("task_arithmetic", vlm_weight=0.0, llm_weight=1.0), "r1", baseline="llm_lm_in_vlm")
    _add(s, 0.35, _recipe("ties", vlm_weight=0.5, llm_weight=1.0, density=0.5), "r2")
    base, searched = _lines(s)
    assert base.endswith("trial 0 (vlm_alone): proxy 0.4500") and searched.endswith(
        "-10.0 points over the VLM alone"
    )
    # the VLM alone failed (or was pruned): the baselines left are ranked, and no gain is invented
    s = _study()
    _add(
        s,
        None,
        _recipe("task_arithmetic", vlm_weight=1.0, llm_weight=0.0),
        "r0",
        state=TrialState.FAIL,
        baseline="vlm_alone",
    )
    _add(s, 0.40, _recipe("task_arithmetic", vlm_weight=0.0, llm_weight=1.0), "r1", baseline="llm_lm_in_vlm")
    _add(s, 0.35, _recipe("ties", vlm_weight=0.5, llm_weight=1.0, density=0.5), "r2")
    base, searched = _lines(s)
    assert base.endswith("trial 1 (llm_lm_in_vlm): proxy 0.4000") and searched.endswith("proxy 0.3500")
    # several objectives: no single "best" to print
    from search.cli.demo_summary import best_lines

    assert best_lines(optuna.create_study(directions=["maximize", "maximize"])) == []
