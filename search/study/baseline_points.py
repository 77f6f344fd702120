"""Baselines as points of the search space, so that every sampler learns from them.

A baseline (``[[baselines]]``) is a recipe the user types in. When the study's space can draw exactly that
recipe, the baseline is enqueued with the parameters that draw it (``study.enqueue_trial(params=...)``):
its trial then carries ``params`` and distributions like a sampled one, and TPE, GP and CMA-ES rank it
among the known points. When it cannot (a field the space does not search, such as ``normalize``, or a
value outside a range), it stays a fixed recipe: enqueued with empty params, scored and shown, unseen by
the sampler. Either way the trial keeps its ``recipe`` user attribute, which is what runs, what the recipe
cache keys on and what ``export`` writes.

"Exactly that recipe" is tested on the recipe itself: the parameters are read off the baseline's
normalised recipe (``merge_core.Recipe.to_dict``: defaults filled in), drawn through
:meth:`search.study.space.SearchSpace.suggest` on an ``optuna.trial.FixedTrial``, each checked against its
distribution, and the recipe they give must have the baseline's recipe id.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from search.study.space import SearchSpace

# study user attribute: baseline name → why the sampler cannot see it (absent: every baseline is a point)
OUTSIDE_ATTR = "baselines_outside_space"


def _candidate(space: SearchSpace, recipe: dict[str, Any]) -> dict[str, Any]:
    """Every parameter :meth:`SearchSpace.suggest` might draw, read off a normalised recipe dict."""
    s = space.space
    p: dict[str, Any] = {"method": recipe["method"]}
    for key in ("weight", "vlm_weight", "llm_weight", "lambda", "density"):
        if key in recipe:
            p[key] = recipe[key]
    comps = list(recipe.get("components") or [])
    if s.component_flags:
        for c in s.component_flags:
            p[f"comp_{c}"] = c in comps
    else:
        p["components"] = "+".join(next((c for c in s.components if set(c) == set(comps)), comps))
    sched = recipe.get("schedule") or {}
    p["schedule"] = sched.get("shape", "constant")
    if "start" in sched:
        p["start"] = sched["start"]
    for i, v in enumerate(sched.get("values") or []):
        p[f"r_{i}"] = v
    return p


def baseline_params(space: SearchSpace, fields: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``(params, "")`` when the space draws exactly the baseline with ``fields`` (its recipe id), else
    ``(None, reason)``: a parameter outside its distribution, or the recipe fields that differ."""
    import optuna

    from merge_core import Recipe
    from merge_core.errors import MergesearchError

    try:
        target = Recipe.from_dict(space.baseline(fields))
    except MergesearchError as err:  # the trial fails with this reason when it runs
        return None, str(err)
    want = target.to_dict()
    fixed = optuna.trial.FixedTrial(_candidate(space, want))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # out-of-range values are reported below, by name
            drawn = space.suggest(fixed)
    except ValueError as err:  # a parameter missing, or a choice the space does not offer
        return None, f"outside the space: {err}"
    for name, dist in fixed.distributions.items():
        value = fixed.params[name]
        if not dist._contains(dist.to_internal_repr(value)):
            return None, f"{name} = {value!r} is outside the space ({_describe(dist)})"
    got = Recipe.from_dict(drawn)
    if got.id != target.id:
        have = got.to_dict()
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        return None, "the space does not search " + ", ".join(f"{k} = {want.get(k)!r}" for k in diff)
    return dict(fixed.params), ""


def _describe(dist: optuna.distributions.BaseDistribution) -> str:
    if hasattr(dist, "choices"):
        return "choices " + ", ".join(map(str, dist.choices))
    return f"[{dist.low}, {dist.high}]" + (f" step {dist.step}" if getattr(dist, "step", None) else "")


def enqueue_baselines(study: optuna.Study, space: SearchSpace, baselines: Any) -> dict[str, str]:
    """Enqueue each baseline (with its parameters when it is a point of the space, see the module
    docstring); returns baseline name → reason for those that stay fixed recipes (also stored in the
    study user attribute :data:`OUTSIDE_ATTR`)."""
    outside: dict[str, str] = {}
    for b in baselines:
        params, why = baseline_params(space, b.fields)
        if params is None:
            outside[b.name] = why
        study.enqueue_trial(
            params or {}, user_attrs={"baseline": b.name, "recipe": space.baseline(b.fields)}
        )
    study.set_user_attr(OUTSIDE_ATTR, outside)
    return outside


def register_params(space: SearchSpace, trial: optuna.Trial) -> None:
    """Draw an enqueued in-space baseline's parameters on its trial (they are fixed, so nothing is
    sampled): Optuna records params and distributions only when they are suggested. A study whose
    baselines were enqueued without params (no :data:`OUTSIDE_ATTR`) draws nothing: the sampler would
    pick them."""
    outside = trial.study.user_attrs.get(OUTSIDE_ATTR)
    if outside is not None and trial.user_attrs.get("baseline") not in outside:
        space.suggest(trial)


def learnable(study: optuna.Study) -> tuple[list[str], dict[str, str]]:
    """The baselines the sampler learns from (their trials carry params) and those outside the space with
    the reason, by name, for ``status`` and the report."""
    outside = dict(study.user_attrs.get(OUTSIDE_ATTR) or {})
    names: list[str] = []
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("baseline")
        in_space = t.params or t.system_attrs.get("fixed_params")  # a WAITING trial: params not drawn yet
        if name and in_space and name not in names and name not in outside:
            names.append(name)
    return names, outside


def summary_line(study: optuna.Study) -> str | None:
    """One line: which baselines the sampler could learn from, which stay fixed recipes and why."""
    names, outside = learnable(study)
    if not names and not outside:
        return None
    parts = [f"points of the space (the sampler learns from them): {', '.join(names) or 'none'}"]
    if outside:
        parts.append("fixed recipes: " + "; ".join(f"{n} ({why})" for n, why in outside.items()))
    return "baselines: " + " · ".join(parts)
