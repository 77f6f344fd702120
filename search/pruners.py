"""Pruner factory: ``[pruner] name`` → an Optuna pruner, which decides after each of a trial's steps.

Step r of a trial is chunk r of every proxy dataset (``objectives.scorer.ProxyScorer.steps()``, ``chunk_size``
items per dataset), and after step k the coordinator reports ``trial.report(value, k)`` (k = steps done,
1-based; never after the last step, which completes the trial) where ``value`` is the running objective:
the weighted mean over datasets of running accuracy, an unbiased estimate of the final value from step 1.

* ``median``: MedianPruner — stop a trial whose best reported value up to step k is below the median of
  the COMPLETE trials' values at step k. Defaults ``n_startup_trials=3`` (no decision before 3 COMPLETE
  trials, so the first trials — the toy and Qwen studies' three baselines — normally run in full) and
  ``n_warmup_steps=1`` (decide from step 1: steps are 1-based, so 0 and 1 are the same; with every step
  covering every dataset, a longer warm-up would only delay decisions).
* ``percentile``: PercentilePruner, the same rule with the ``percentile``-th best instead of the median;
  defaults ``percentile=25.0`` (continue only in the top quarter), ``n_startup_trials=3``,
  ``n_warmup_steps=2``.
* ``successive_halving``: SuccessiveHalvingPruner (asynchronous successive halving) — at the rung steps
  ``min_resource · reduction_factor**k`` a trial continues only if its value is among the top
  ``1 / reduction_factor`` of all trials (COMPLETE or PRUNED) that reached that rung (the best so far
  while fewer than ``reduction_factor`` have). Defaults ``reduction_factor=3`` and
  ``min_resource = max(1, n_steps // 4)``: rungs after a quarter and three quarters of the items whatever
  the chunk size (chunk_size 25 on 200-item proxies → 8 steps → rungs at steps 2 and 6; chunk_size 50 →
  steps 1 and 3; ``n_steps`` unknown: 1). The default when a study names no pruner, and the shipped
  studies' choice (studies/toy.toml: chunk_size 50, ``min_resource = 1`` written out). It has no
  start-up trials; the coordinator runs baselines in full whatever the verdict (they are reference
  points), though their rung values count.
* ``hyperband``: ``min_resource=1``, ``max_resource`` = the number of steps when known,
  ``reduction_factor=3``.
* ``wilcoxon``: Optuna's WilcoxonPruner — after each step, a one-sided Wilcoxon signed-rank test of the
  trial's per-item results against the best trial's on the same items; stop at ``p < p_threshold``
  (default 0.1, ``n_startup_steps=2``). Fed per item by the coordinator (search.item_reports: one
  ``trial.report`` per item at its index), decided on the coordinator through the store.
* ``none``: never prune (and the only choice for several objectives).
``[pruner] options`` override these as keyword arguments; one Optuna rejects is a StudySpecError naming
``pruner.options``.

Why (benchmarks/search_pruning.py: real per-item results of the 49-cell toy landscape replayed through
the product's TPE sampler and these pruners; proxy items spent until a COMPLETE trial reaches the grid's
best, with vs without pruning; issue #6 §8 target >= 30% fewer items for the same best, median over
sampler seeds 0-4). Toy world seed 0, chunk_size 25, median saving over sampler seeds 0-4 / 0-9 / 0-19:
``successive_halving`` defaults 46% / 43% / 44% (world seed 1: 38% / 33% / 41%; chunk_size 50: the same
numbers, as the rungs fall on the same items); ``median`` (3, 1) 23% / 35% / 36% (world 1: 26% / 32% /
40%) — below the target on seeds 0-4, where TPE's random start-up finds the best cell within 3-6 trials,
before a median can decide; the previous ``median`` (5, 2) 16% / 18% / 16%; ``percentile`` defaults 33% /
34% / 34% (world 1: 34% / 36% / 38%; chunk_size 50: 22-25%). With all of these the same best was reached
in 20/20 seeds on both worlds and no trial of the grid-best cell was ever pruned; more aggressive settings
(median with 2 start-up trials or percentile 25-40 with 3, deciding from step 1; successive halving with
its first rung at step 1 of 8) pruned the best cell in 1-4 of 20 seeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.spec import StudySpec, StudySpecError

if TYPE_CHECKING:
    import optuna


def make_pruner(spec: StudySpec, *, n_steps: int | None = None) -> optuna.pruners.BasePruner:
    """The pruner named in ``spec.pruner``; ``n_steps`` (steps per trial) sizes successive halving's
    first rung and Hyperband (unknown: ``min_resource=1`` and ``"auto"``)."""
    import optuna

    name = spec.pruner.name
    opts: dict[str, Any] = dict(spec.pruner.options)
    try:
        if name == "median":
            kw: dict[str, Any] = {"n_startup_trials": 3, "n_warmup_steps": 1}
            kw.update(opts)
            return optuna.pruners.MedianPruner(**kw)
        if name == "percentile":
            kw = {"percentile": 25.0, "n_startup_trials": 3, "n_warmup_steps": 2}
            kw.update(opts)
            return optuna.pruners.PercentilePruner(**kw)
        if name == "successive_halving":
            kw = {"min_resource": max(1, (n_steps or 0) // 4), "reduction_factor": 3}
            kw.update(opts)
            return optuna.pruners.SuccessiveHalvingPruner(**kw)
        if name == "hyperband":
            kw = {"min_resource": 1, "max_resource": n_steps or "auto", "reduction_factor": 3}
            kw.update(opts)
            return optuna.pruners.HyperbandPruner(**kw)
        if name == "wilcoxon":
            kw = {"p_threshold": 0.1, "n_startup_steps": 2}
            kw.update(opts)
            return optuna.pruners.WilcoxonPruner(**kw)
        if name == "none":
            return optuna.pruners.NopPruner()
    except (TypeError, ValueError) as err:  # an unknown keyword, or a value Optuna rejects
        raise StudySpecError(
            f"{spec.path or '<study>'}: field `pruner.options` is not accepted by {name}: {err}"
        ) from None
    raise StudySpecError(f"{spec.path or '<study>'}: field `pruner.name` is {name!r}, which is not a pruner")


def may_prune(pruner: optuna.pruners.BasePruner, step: int, n_complete: int) -> bool:
    """Whether ``pruner`` could stop a trial that has just reported ``step`` (steps done, 1-based) in a
    study with ``n_complete`` COMPLETE trials. False only when that is certain, which lets the coordinator
    queue the next step before the report instead of waiting for the decision. Assumes the coordinator's
    contract: a trial reports every step from 1 in order and asks ``should_prune`` after each report.

    Percentile and median pruners (``optuna.pruners.PercentilePruner``) decide nothing before
    ``max(1, n_startup_trials)`` complete trials, below ``n_warmup_steps``, or off their ``interval_steps``
    grid (the first report at or after ``n_warmup_steps + j·interval_steps``: Optuna's
    ``PercentilePruner.prune``); successive halving decides (and records the trial's rung value, so it
    must be asked then) only at its rung steps; ``NopPruner`` never prunes; any other pruner may always.
    tests/test_search_pruners.py checks this function against the pruners' own ``prune``.
    """
    import optuna

    if isinstance(pruner, optuna.pruners.NopPruner):
        return False
    if isinstance(pruner, optuna.pruners.PercentilePruner):
        # the attributes hold the constructor's arguments (an Optuna change shows up in the tests)
        startup, warmup, interval = pruner._n_startup_trials, pruner._n_warmup_steps, pruner._interval_steps
        if n_complete < max(1, startup) or step < warmup:
            return False
        # Optuna decides at the first report at or after each pruning step warmup + j·interval (j >= 0);
        # the coordinator reports every step from 1, so the previous report is step - 1 (none at step 1)
        nearest_pruning_step = (step - warmup) // interval * interval + warmup
        previous = step - 1 if step > 1 else -1
        return previous < nearest_pruning_step
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner):
        # decides (and records the trial's rung value) only on reaching a rung step
        # min_resource · reduction_factor^(min_early_stopping_rate + rung); "auto" is unknown until set
        rung_step = pruner._min_resource
        if rung_step is None:
            return True
        rung_step *= pruner._reduction_factor**pruner._min_early_stopping_rate
        while rung_step < step:
            rung_step *= pruner._reduction_factor
        return rung_step == step
    return True


def reports_step(pruner: optuna.pruners.BasePruner, step: int, n_complete: int) -> bool:
    """Whether the coordinator writes ``trial.report`` after ``step`` (one SQL write each) when no
    decision is due there: what a later decision or Optuna's samplers read back from the store.

    No pruner: nothing (the full per-item records are on disk). Successive halving: only its rung steps,
    where it decides (it compares rung values it records itself, and TPE ranks a pruned trial by the
    value of the step it stopped at). Every other pruner: every step (percentile pruners compare other
    trials' values at each step, whichever steps those trials were decided at).
    """
    import optuna

    if isinstance(pruner, optuna.pruners.NopPruner):
        return False
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner):
        return may_prune(pruner, step, n_complete)
    return True
