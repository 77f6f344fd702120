"""Reading a study's trials: ranked COMPLETE trials, the Pareto front, and their stored recipes.

Every trial the coordinator runs carries user attributes (see docs/interfaces.md): ``recipe`` (the
recipe dict), ``recipe_id``, ``scores`` ({dataset: accuracy}), ``merge_s``, ``eval_s``, ``worker``,
``fail_reason``; baselines add ``baseline`` (their name). Optuna refuses to change a finished trial,
so results computed after the search (e.g. promotion's ``full_eval``) are kept in study user attributes
``trial/<number>/<key>``; :func:`trial_attr` reads both places.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from merge_core.errors import MergesearchError
from search.study.constrained import is_feasible, stored_constraints

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


class TrialLookupError(MergesearchError):
    """A trial asked for by number does not exist, is not COMPLETE, or carries no recipe."""


def _post_key(number: int, key: str) -> str:
    return f"trial/{number}/{key}"


def set_trial_result(study: optuna.Study, trial: FrozenTrial | int, key: str, value: Any) -> None:
    """Attach a JSON value to a (possibly finished) trial, readable through :func:`trial_attr`."""
    number = trial if isinstance(trial, int) else trial.number
    study.set_user_attr(_post_key(number, key), value)


def trial_attr(study: optuna.Study | None, trial: FrozenTrial, key: str, default: Any = None) -> Any:
    """``key`` of ``trial``: its own user attribute, else one attached later with :func:`set_trial_result`."""
    if key in trial.user_attrs:
        return trial.user_attrs[key]
    if study is not None:
        return study.user_attrs.get(_post_key(trial.number, key), default)
    return default


def counts_by_state(study: optuna.Study) -> dict[str, int]:
    """Number of trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    c = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {s: c.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that carry a recipe, in trial-number order."""
    from optuna.trial import TrialState

    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "recipe" in t.user_attrs
    ]


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials best first.

    Single objective: by value in the study's direction (ties: lower trial number first), infeasible
    trials of a constrained study (:func:`infeasible_numbers`) after the feasible ones.
    Several objectives: the Pareto front first (each ranked by the mean of its values), then the rest
    by the same mean — every objective here is a maximized accuracy.
    """
    trials = complete_trials(study)
    if len(study.directions) == 1:
        sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
        bad = infeasible_numbers(study, trials)
        return sorted(trials, key=lambda t: (t.number in bad, sign * float(t.value), t.number))
    front = {t.number for t in pareto_front(study)}
    return sorted(trials, key=lambda t: (t.number not in front, -sum(t.values) / len(t.values), t.number))


def infeasible_numbers(study: optuna.Study, trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials whose constraint values (search.study.constrained) are not all <= 0."""
    if not any(t.constraints for t in trials):  # not a constrained study (its baseline carries values)
        return set()
    post = study.user_attrs
    return {t.number for t in trials if is_feasible(stored_constraints(study, t, post)) is False}


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated COMPLETE trials (``study.best_trials``), in trial-number order."""
    return sorted((t for t in study.best_trials if "recipe" in t.user_attrs), key=lambda t: t.number)


def best_trials(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The K best trials for single objective; the Pareto front (ranked, at most K) for several."""
    ranked = ranked_trials(study)
    if len(study.directions) > 1:
        front = {t.number for t in pareto_front(study)}
        ranked = [t for t in ranked if t.number in front]
    return ranked[:top_k]


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """The trial with this number; :class:`TrialLookupError` if absent."""
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise TrialLookupError(f"study {study.study_name!r} has no trial {number}; see `mergesearch status`")


def trial_recipe_dict(trial: FrozenTrial) -> dict[str, Any]:
    """The recipe dict stored on ``trial``; :class:`TrialLookupError` if it carries none."""
    recipe = trial.user_attrs.get("recipe")
    if not isinstance(recipe, dict):
        raise TrialLookupError(f"trial {trial.number} has no stored recipe (user attribute `recipe`)")
    return recipe


def trial_recipe(trial: FrozenTrial):  # -> merge_core.Recipe
    """The stored recipe of ``trial`` as a validated ``merge_core.Recipe``."""
    from merge_core import Recipe

    return Recipe.from_dict(trial_recipe_dict(trial))


def trial_scores(trial: FrozenTrial) -> dict[str, float]:
    """Per-dataset proxy accuracies stored on the trial ({} if none)."""
    return dict(trial.user_attrs.get("scores") or {})


def baseline_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """COMPLETE baseline trials by baseline name (the latest if one was re-run)."""
    out: dict[str, FrozenTrial] = {}
    for t in complete_trials(study):
        name = t.user_attrs.get("baseline")
        if name:
            out[name] = t
    return out
