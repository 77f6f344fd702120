"""The method registry: recipes keep their ids, every method is declared once, the readers agree."""

from __future__ import annotations

import pytest

from merge_core.errors import RecipeError
from merge_core.methods import registry
from merge_core.recipe import Recipe

# ids computed by the recipe code before the registry existed (commit 5cac9f8)
PINNED = [
    ({"vlm": "v", "llm": "l", "method": "linear", "weight": 0.3}, '3a5e3168401c'),
    ({"vlm": "v", "llm": "l", "method": "layer_swap", "weight": 0.5, "schedule": {"shape": "step", "start": 4}}, 'bf836a16a274'),
    ({"vlm": "v", "llm": "l", "base": "b", "method": "task_arithmetic", "llm_weight": 0.7, "lambda": 0.9}, 'e02b0a493dd2'),
    ({"vlm": "v", "llm": "l", "base": "b", "method": "ties", "density": 0.4, "components": ["mlp", "attention"]}, '91a3e3e3e39d'),
    ({"vlm": "v", "llm": "l", "base": "b", "method": "dare_ties", "density": 0.3, "seed": 7, "schema": "mergesearch.recipe/v1"}, 'b339a915d7ae'),
    ({"vlm": "v", "llm": "l", "method": "linear", "weight": 0.4, "compat": "vlm_merging", "dtype": "bfloat16"}, 'b475b368c3d7'),
]


@pytest.mark.parametrize(("fields", "rid"), PINNED)
def test_recipe_ids_unchanged(fields: dict, rid: str) -> None:
    r = Recipe.from_dict(fields)
    assert r.id == rid
    assert Recipe.from_dict(r.to_dict()) == r


def test_every_method_has_a_mergekit_impl_and_a_known_family() -> None:
    for name, m in registry.registry().items():
        assert m.name == name
        assert "mergekit" in m.impls
        assert m.family in registry.FAMILIES
        assert len({p.name for p in m.params}) == len(m.params)


def test_fields_of_other_methods_are_rejected_by_name() -> None:
    with pytest.raises(RecipeError, match="'density' does not apply to method 'linear'"):
        Recipe.from_dict({"vlm": "v", "llm": "l", "weight": 0.5, "density": 0.5})


def test_study_space_and_export_take_the_registered_methods() -> None:
    import optuna

    from search.results.export import mergekit_config
    from search.study.space import SearchSpace
    from search.study.spec import SEARCHED, own_searched, spec_from_dict

    searched = {p.name for m in registry.registry().values() for p in m.params if p.searched}
    assert searched == set(SEARCHED) | set(own_searched())
    assert set(own_searched()) == {"epsilon", "gamma", "select_topk"}
    study = {
        "name": "t", "n_trials": 4, "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
        "objectives": {"datasets": ["A"]},
        "space": {"methods": ["della", "breadcrumbs", "sce"], "density": {"low": 0.3, "high": 0.6}},
    }  # fmt: skip
    spec = spec_from_dict(study)
    space = SearchSpace(spec)
    seen = set()
    for t in range(12):
        trial = optuna.trial.FixedTrial({"method": spec.space.methods[t % 3], "vlm_weight": 1.0,
                                         "llm_weight": 0.5, "density": 0.4})  # fmt: skip
        r = Recipe.from_dict(space.suggest(trial))
        seen.add(r.method)
        assert (r.density is not None) == (r.method != "sce")
    assert seen == {"della", "breadcrumbs", "sce"}
    with pytest.raises(Exception, match="allowed: .*della"):
        spec_from_dict({**study, "space": {"methods": ["nope"]}})
    base = {"vlm": "v", "llm": "l", "base": "b", "dtype": "float32"}
    cfg = mergekit_config({**base, "method": "della", "density": 0.5, "epsilon": 0.1}, n_layers=2)
    assert cfg["merge_method"] == "della"
    assert cfg["models"][1]["parameters"]["epsilon"] == 0.1 and cfg["parameters"]["rescale"] is True
    cfg = mergekit_config({**base, "method": "breadcrumbs", "density": 0.5, "gamma": 0.02}, n_layers=2)
    assert cfg["merge_method"] == "breadcrumbs" and cfg["models"][0]["parameters"]["gamma"] == 0.02
    cfg = mergekit_config({**base, "method": "sce", "select_topk": 0.3}, n_layers=2)
    assert cfg["merge_method"] == "sce" and cfg["parameters"]["select_topk"] == 0.3
    cfg = mergekit_config({**base, "method": "layer_swap", "weight": 0.5, "schedule": {"shape": "step", "start": 1}}, n_layers=2)
    assert cfg["merge_method"] == "linear"


_STUDY = {
    "name": "t", "n_trials": 4, "models": {"vlm": "org/vlm", "llm": "org/llm", "base": "org/base"},
    "objectives": {"datasets": ["A"]},
}  # fmt: skip


def test_a_methods_own_fields_are_searched_when_the_study_ranges_them() -> None:
    """della's epsilon, breadcrumbs' gamma and sce's select_topk: suggested (within the range) and written
    into the recipe when ``space.<name>`` ranges them, the method's default otherwise; the grid has them."""
    import optuna

    from search.study.space import SearchSpace
    from search.study.spec import spec_from_dict

    space = {"methods": ["della", "breadcrumbs", "sce"], "density": {"low": 0.3, "high": 0.6, "step": 0.1},
             "epsilon": {"low": 0.05, "high": 0.2, "step": 0.05}, "gamma": [0.0, 0.1],
             "select_topk": [0.2, 0.8]}  # fmt: skip
    spec = spec_from_dict({**_STUDY, "space": space})
    s = SearchSpace(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[float]] = {"epsilon": set(), "gamma": set(), "select_topk": set()}
    for _ in range(30):
        trial = study.ask()
        r = Recipe.from_dict(s.suggest(trial))
        study.tell(trial, 0.0)
        own = {"della": "epsilon", "breadcrumbs": "gamma", "sce": "select_topk"}[r.method]
        assert own in trial.params  # a point of the space the sampler learns from
        seen[own].add(trial.params[own])
    assert all(len(v) > 3 for v in seen.values())  # sampled, not fixed
    assert all(0.05 <= e <= 0.2 for e in seen["epsilon"]) and all(0.0 <= g <= 0.1 for g in seen["gamma"])
    assert all(0.2 <= k <= 0.8 for k in seen["select_topk"])
    grid = {"methods": ["della"], "vlm_weight": 1.0, "llm_weight": 0.5, "density": {"low": 0.3, "high": 0.6, "step": 0.1},
            "epsilon": {"low": 0.05, "high": 0.2, "step": 0.05}}  # fmt: skip
    assert SearchSpace(spec_from_dict({**_STUDY, "space": grid})).grid()["epsilon"] == [0.05, 0.1, 0.15, 0.2]
    unranged = SearchSpace(spec_from_dict({**_STUDY, "space": {"methods": ["della"], "density": [0.3, 0.6]}}))
    trial = optuna.trial.FixedTrial({"vlm_weight": 1.0, "llm_weight": 0.5, "density": 0.4})
    r = unranged.suggest(trial)
    assert "epsilon" not in r and Recipe.from_dict(r).to_dict()["epsilon"] == 0.0  # della's declared default


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({"methods": ["della"], "density": [0.1, 0.6], "epsilon": [0.0, 0.2]},
         r"space\.density.*'della'.*density ± epsilon.*narrow space\.density / space\.epsilon"),
        ({"methods": ["breadcrumbs"]}, r"space\.density.*'breadcrumbs'.*'gamma'.*narrow space\.density$"),
        ({"methods": ["ties"], "epsilon": [0.1, 0.2]}, r"space\.epsilon.*applies to della only"),
        ({"methods": ["sce"], "select_topk": [0.0, 0.5]}, r"space\.select_topk.*must be > 0"),
        ({"methods": ["della"], "epsilon": [0.1, 0.2], "fixed": {"epsilon": 0.1}}, r"space\.fixed.*epsilon"),
    ],
)  # fmt: skip
def test_a_space_that_can_draw_an_invalid_recipe_is_refused_before_the_search(space: dict, match: str) -> None:
    from search.study.spec import StudySpecError, spec_from_dict

    with pytest.raises(StudySpecError, match=match):
        spec_from_dict({**_STUDY, "space": space})


def test_a_fixed_method_field_goes_only_to_the_methods_that_take_it() -> None:
    import optuna

    from search.study.space import SearchSpace
    from search.study.spec import StudySpecError, spec_from_dict

    spec = spec_from_dict({**_STUDY, "space": {"methods": ["linear", "ties", "sce"], "density": [0.3, 0.6],
                                               "fixed": {"rescale": "none", "compat": "mergekit"}}})  # fmt: skip
    s = SearchSpace(spec)
    for method in spec.space.methods:
        r = s.suggest(optuna.trial.FixedTrial({"method": method, "weight": 0.5, "vlm_weight": 1.0,
                                               "llm_weight": 0.5, "density": 0.4}))  # fmt: skip
        recipe = Recipe.from_dict(r)  # every drawn recipe validates
        assert ("rescale" in r) == (method == "ties") and r["compat"] == "mergekit", (method, r)
        assert recipe.method == method
    with pytest.raises(StudySpecError, match=r"space\.fixed.*'epsilon'.*della"):
        spec_from_dict({**_STUDY, "space": {"methods": ["ties"], "fixed": {"epsilon": 0.1}}})
