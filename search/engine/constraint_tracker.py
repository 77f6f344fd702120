"""The coordinator's side of a constrained study: constraint values for each trial it tells.

The rule (what a constraint value is, when a trial is feasible) is :mod:`search.study.constrained`'s; this
module applies it on the store thread, just before each ``study.tell``, including the trials told before
the named baseline had scores (see search.study.constrained's docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.study.constrained import CONSTRAINTS_ATTR, ConstrainedSpec, constraint_values
from search.study.objective_values import short_name
from search.study.trials import baseline_trials, set_trial_result

if TYPE_CHECKING:
    import optuna

    from search.study.spec import StudySpec


class ConstraintTracker:
    """The coordinator's side: constraint values for each trial it tells (see the module docstring)."""

    def __init__(self, spec: StudySpec, study: optuna.Study) -> None:
        self.c: ConstrainedSpec = spec.objectives.constrained  # type: ignore[assignment]
        base = baseline_trials(study).get(self.c.baseline)
        self.base_scores: dict[str, float] | None = (
            dict(base.user_attrs.get("scores") or {}) if base else None
        )
        self.pending: dict[int, dict[str, float]] = {}  # trial number -> scores, told before the baseline

    def at_tell(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        baseline: str | None,
        scores: dict[str, float],
        complete: bool,
    ) -> None:
        """Store thread, just before ``study.tell``: set the trial's constraints (or remember it until the
        baseline completes); when this is the baseline completing, store the pending trials' values."""
        scores = {short_name(d): v for d, v in scores.items()}
        if baseline == self.c.baseline and complete:
            self.base_scores = dict(scores)
            for number, s in self.pending.items():
                set_trial_result(
                    study, number, CONSTRAINTS_ATTR, constraint_values(s, self.base_scores, self.c)
                )
            self.pending.clear()
        if self.base_scores is None:
            self.pending[trial.number] = scores
            return
        for d, v in constraint_values(scores, self.base_scores, self.c).items():
            trial.set_constraint(d, v)
