"""``[objectives] mode = "constrained"``: maximise one dataset, keep the others within δ points of a baseline.

Study file::

    [objectives]
    mode = "constrained"
    constrained = { maximize = "MathVision_PROXY200", baseline = "vlm_alone", within = 1.0 }

reads "maximise MATH-V subject to every other dataset ≥ vlm_alone's score on it − 1.0 points". The told
value is the ``maximize`` dataset's accuracy (:func:`search.study.objective_values.dataset_weights` gives it
weight 1, the others 0, so the workers' gate prunes on it too). For each other dataset ``d`` the trial
carries the constraint ``c_d = (acc_d(baseline) − within/100) − acc_d(trial)``, feasible when ≤ 0, set with
Optuna's public ``Trial.set_constraint`` just before the tell (Optuna 5 deprecates ``constraints_func``;
TPE, GP and NSGA-II read ``trial.constraints`` themselves).

The baseline's scores exist only once its trial has run. Baselines are enqueued first and never pruned, but
with several workers a sampled trial can end before it. Such a trial is told without constraints (Optuna's
samplers count it feasible); when the baseline completes, :class:`search.engine.constraint_tracker.ConstraintTracker` stores those trials'
constraint values as the post-search result ``constraints`` (:func:`search.study.trials.set_trial_result`), which
ranking, ``status`` and the report read. A resumed study reads the baseline's scores from its trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search.study.objective_values import short_name

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.study.spec import StudySpec

CONSTRAINTS_ATTR = "constraints"
SAMPLERS_WITH_CONSTRAINTS = ("tpe", "gp", "nsga2", "random", "grid")  # random / grid: sample regardless


@dataclass(frozen=True)
class ConstrainedSpec:
    """``maximize``: the dataset (short name) whose accuracy is told; ``baseline``: the named baseline the
    others are held to; ``within``: the allowed loss in points."""

    maximize: str
    baseline: str
    within: float = 1.0
    aliases: tuple[str, ...] = ()  # the maximised dataset's proxy name when the study samples a proxy

    @property
    def targets(self) -> tuple[str, ...]:
        """Names the maximised dataset goes by in trial scores (itself, and its proxy's name)."""
        return (self.maximize, *self.aliases)


def parse_constrained(t: Any, mode: str, datasets: tuple[str, ...]) -> ConstrainedSpec | None:
    """``objectives.constrained`` from the objectives table reader ``t`` (search.study.spec_reader.TableReader)."""
    from objectives.proxy import proxy_name

    raw = t.get("constrained")
    if mode != "constrained":
        if raw is not None:
            raise t.fail("constrained", f"is set but objectives.mode is {mode!r}; set mode = 'constrained'")
        return None
    if not isinstance(raw, dict):
        raise t.fail(
            "constrained",
            'is required for mode = "constrained", e.g. { maximize = "MathVision_PROXY200", '
            'baseline = "vlm_alone", within = 1.0 }',
        )
    unknown = sorted(set(raw) - {"maximize", "baseline", "within"})
    if unknown:
        raise t.fail("constrained", f"has unknown keys {unknown}; allowed: maximize, baseline, within")
    target, base, within = raw.get("maximize"), raw.get("baseline", "vlm_alone"), raw.get("within", 1.0)
    if not isinstance(target, str) or not target:
        raise t.fail("constrained.maximize", f"must name a dataset of objectives.datasets, got {target!r}")
    names = [short_name(d) for d in datasets]
    if names and target not in names:
        raise t.fail("constrained.maximize", f"is {target!r}, which is not in objectives.datasets {names}")
    if names and len(names) < 2:
        raise t.fail("mode", "is 'constrained' but only one dataset is listed; list the datasets to keep too")
    if not isinstance(base, str) or not base:
        raise t.fail("constrained.baseline", f"must name one of the study's [[baselines]], got {base!r}")
    if isinstance(within, bool) or not isinstance(within, (int, float)) or within < 0:
        raise t.fail("constrained.within", f"must be a non-negative number of points, got {within!r}")
    size = t.get("proxy_size", 0)
    aliases = (proxy_name(target, size),) if isinstance(size, int) and size > 0 else ()
    return ConstrainedSpec(target, base, float(within), aliases)


def check_study(spec: StudySpec, src: str) -> None:
    """Checks that need the whole study: the baseline exists, the sampler honours constraints."""
    from search.study.spec_reader import StudySpecError

    c = spec.objectives.constrained
    if c is None:
        return
    if c.baseline not in {b.name for b in spec.baselines}:
        raise StudySpecError(
            f"{src}: field `objectives.constrained.baseline` is {c.baseline!r}, which is not a [[baselines]] "
            f"name ({', '.join(b.name for b in spec.baselines) or 'none'}); add it or name another"
        )
    if spec.sampler.name not in SAMPLERS_WITH_CONSTRAINTS:
        raise StudySpecError(
            f"{src}: field `sampler.name` is {spec.sampler.name!r}, which ignores constraints; use 'tpe', "
            "'gp' or 'nsga2' for objectives.mode = 'constrained'"
        )


def constraint_values(
    scores: dict[str, float], base_scores: dict[str, float], c: ConstrainedSpec
) -> dict[str, float]:
    """``{d: (base_d − within/100) − acc_d}`` for every dataset but the target (feasible: all ≤ 0)."""
    return {
        d: (base_scores[d] - c.within / 100.0) - float(a)
        for d, a in scores.items()
        if d not in c.targets and d in base_scores
    }


def is_feasible(values: dict[str, float] | None) -> bool | None:
    """All constraint values ≤ 0; None when there are none."""
    if not values:
        return None
    return all(v <= 0.0 for v in values.values())


def stored_constraints(
    study: optuna.Study, trial: FrozenTrial, post: dict[str, Any] | None = None
) -> dict[str, float]:
    """The trial's constraint values: set at its tell (``trial.constraints``) or stored later."""
    if trial.constraints:
        return dict(trial.constraints)
    attrs = study.user_attrs if post is None else post
    return dict(attrs.get(f"trial/{trial.number}/{CONSTRAINTS_ATTR}") or {})
