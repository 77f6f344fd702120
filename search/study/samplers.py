"""Sampler factory: ``[sampler] name`` → an Optuna sampler, rebuilt on every start (Optuna stores none).

* ``tpe`` (default): multivariate, ``group=True`` so conditional parameters (density only for TIES/DARE,
  start only for the step schedule) are modelled per sub-space; ``constant_liar`` so several workers
  running at once do not all get the same suggestion.
* ``gp``: Optuna's GPSampler (torch). ``cmaes``: numeric spaces only (checked in :mod:`search.study.spec`).
* ``nsga2``: genetic, for multi-objective. ``random``. ``grid``: every cell of :meth:`SearchSpace.grid`.
``[sampler] options`` are passed to the sampler's constructor as keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.study.spec import StudySpec, StudySpecError

if TYPE_CHECKING:
    import optuna


def _grid_sampler_class() -> type:
    import optuna

    class _AskTellGrid(optuna.samplers.GridSampler):
        """GridSampler whose ``after_trial`` does not call ``study.stop()`` (which raises outside
        ``study.optimize``); the coordinator stops on ``is_exhausted`` itself."""

        def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
            return None

    return _AskTellGrid


def make_sampler(spec: StudySpec, *, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler named in ``spec.sampler``, seeded with ``sampler.seed`` (default: the study seed).

    ``salt`` (the coordinator passes the number of trials and coordinators already in the study) changes
    the seed deterministically: a resumed or second coordinator must not replay the first one's draws,
    which a sampler rebuilt with the same seed would do (its random start-up trials would repeat).
    """
    import warnings

    import optuna

    from search.study.space import SearchSpace

    # TPE's `group` (conditional parameters) is marked experimental; it is what the conditional space needs
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    name = spec.sampler.name
    seed = spec.sampler.seed if spec.sampler.seed is not None else spec.seed
    if salt:
        seed = (seed + 1_000_003 * salt) % (2**32)
    opts: dict[str, Any] = dict(spec.sampler.options)
    try:
        if name == "tpe":
            kw = {"multivariate": True, "group": True, "constant_liar": True, "n_startup_trials": 8}
            kw.update(opts)
            return optuna.samplers.TPESampler(seed=seed, **kw)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, **opts)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **opts)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, **opts)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **opts)
        if name == "grid":
            return _grid_sampler_class()(SearchSpace(spec).grid(), seed=seed, **opts)
    except TypeError as err:
        raise StudySpecError(
            f"{spec.path or '<study>'}: field `sampler.options` is not accepted by {name}: {err}"
        ) from None
    raise StudySpecError(
        f"{spec.path or '<study>'}: field `sampler.name` is {name!r}, which is not a sampler"
    )
