"""Pruner factory: ``[pruner] name`` → an Optuna pruner. A trial's steps are its proxy chunks.

* ``median`` (default): stop a trial whose running accuracy after chunk k is below the median of earlier
  trials at chunk k; defaults ``n_startup_trials=5`` (the baselines and first samples run in full) and
  ``n_warmup_steps=2`` (no pruning before the third chunk: with datasets interleaved, the first chunks are
  too noisy — on the toy landscape warm-up 1 pruned the best cell and TPE never came back to it).
* ``hyperband``: ``min_resource=1``, ``max_resource`` = the number of chunks when known, ``reduction_factor=3``.
* ``none``: never prune (and the only choice for several objectives).
``[pruner] options`` override these as keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.spec import StudySpec, StudySpecError

if TYPE_CHECKING:
    import optuna


def make_pruner(spec: StudySpec, *, n_steps: int | None = None) -> optuna.pruners.BasePruner:
    """The pruner named in ``spec.pruner``; ``n_steps`` (chunks per trial) sizes Hyperband."""
    import optuna

    name = spec.pruner.name
    opts: dict[str, Any] = dict(spec.pruner.options)
    try:
        if name == "median":
            kw: dict[str, Any] = {"n_startup_trials": 5, "n_warmup_steps": 2}
            kw.update(opts)
            return optuna.pruners.MedianPruner(**kw)
        if name == "hyperband":
            kw = {"min_resource": 1, "max_resource": n_steps or "auto", "reduction_factor": 3}
            kw.update(opts)
            return optuna.pruners.HyperbandPruner(**kw)
        if name == "none":
            return optuna.pruners.NopPruner()
    except TypeError as err:
        raise StudySpecError(
            f"{spec.path or '<study>'}: field `pruner.options` is not accepted by {name}: {err}"
        ) from None
    raise StudySpecError(f"{spec.path or '<study>'}: field `pruner.name` is {name!r}, which is not a pruner")
