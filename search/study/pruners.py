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
  (default 0.1, ``n_startup_steps=2``). Fed per item by the coordinator (search.engine.item_reports: one
  ``trial.report`` per item at its index), decided on the coordinator through the store.
* ``none``: never prune (and the only choice for several objectives).
``[pruner] options`` override these as keyword arguments; one Optuna rejects is a StudySpecError naming
``pruner.options``.

Who decides. :func:`make_pruner` returns Optuna's own pruner (what ``trial.should_prune()`` runs: Hyperband
and Wilcoxon on the coordinator through the store, and the benchmarks' replays). Successive halving and the
percentile/median pruners are decided by mergesearch's own rules below (:class:`SuccessiveHalvingRule`,
:class:`PercentileRule`), which take the same arguments and read only records mergesearch holds: on the
worker at a rung (``search.engine.gate``) and on the coordinator's copy of the study (``search.engine.prune_view``), so
no Optuna release changes a decision. tests/test_search_pruning_rules.py checks every rule against
Optuna's pruner of the same arguments on identical random histories.

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

import inspect
import math
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search.study.spec import StudySpec, StudySpecError

if TYPE_CHECKING:
    import optuna

RUNG_PREFIX = "completed_rung_"
"""Key prefix of successive halving's rung records: ``completed_rung_<k>`` = the trial's value on reaching
rung ``k``, a trial system attribute. The names Optuna's SuccessiveHalvingPruner writes, chosen so that
records made by either (this rule, or ``should_prune`` with Optuna's pruner) mean the same to the other."""


@dataclass(frozen=True)
class SuccessiveHalvingRule:
    """Asynchronous successive halving (ASHA: Li et al. 2020, "A System for Massively Parallel
    Hyperparameter Tuning", MLSys, arXiv 1810.05934, Algorithm 2).

    Rung ``k`` (k = 0, 1, ...) is reached after ``r·η^(s+k)`` steps (``r`` = ``min_resource``, ``η`` =
    ``reduction_factor``, ``s`` = ``min_early_stopping_rate``). On reaching it a trial records its value
    there (``completed_rung_<k>``) and goes on only if that value is among the top ``⌊n_k / η⌋`` of the
    ``n_k`` values recorded at rung ``k`` so far, its own included (ties go on). Asynchronous: the rung is
    judged on whichever trials reached it first, with no waiting for a full rung. A stopped trial is never
    resumed (the paper's promotion of a paused trial has no counterpart), so while ``n_k < η`` the trial
    goes on only if it is the best at the rung, and with ``bootstrap_count = b`` a trial stops at a rung
    that holds ``b`` or fewer values. These are the choices of Optuna's SuccessiveHalvingPruner, whose
    decisions this rule reproduces. ``min_resource`` None ("auto"): ``max(1, ⌊last / 100⌋)`` with ``last``
    the largest last reported step of a COMPLETE trial, fixed once known (no decision before).
    """

    min_resource: int | None
    reduction_factor: int
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0

    def rung_step(self, rung: int, min_resource: int | None = None) -> int:
        """The step count at which rung ``rung`` is reached: ``r·η^(s+rung)``."""
        r = self.min_resource if min_resource is None else min_resource
        assert r is not None, "min_resource 'auto' is resolved by the caller"
        return r * self.reduction_factor ** (self.min_early_stopping_rate + rung)

    def is_rung(self, step: int) -> bool:
        """Whether ``step`` is a rung step (unknown with ``min_resource`` 'auto': True)."""
        if self.min_resource is None:
            return True
        rung = 0
        while self.rung_step(rung) < step:
            rung += 1
        return self.rung_step(rung) == step

    def prune(
        self,
        step: int,
        value: float,
        own: Mapping[str, Any],
        others: Iterable[Mapping[str, Any]],
        maximize: bool,
        min_resource: int | None = None,
    ) -> tuple[bool, dict[str, float]]:
        """The verdict for a trial whose latest report is ``value`` after ``step`` steps, with its own rung
        records ``own`` and every other trial's ``others`` (any state); returns it with the rung records
        this decision makes (one per rung passed or failed here)."""
        r = self.min_resource if min_resource is None else min_resource
        if r is None:
            return False, {}
        made: dict[str, float] = {}
        rung = 0
        while f"{RUNG_PREFIX}{rung}" in own:
            rung += 1
        held: list[Mapping[str, Any]] | None = None  # read only at a rung
        while step >= self.rung_step(rung, r):
            if math.isnan(value):
                return True, made
            key = f"{RUNG_PREFIX}{rung}"
            made[key] = value
            if held is None:
                held = list(others)
            competing = sorted([o[key] for o in held if key in o] + [value])
            if len(competing) <= self.bootstrap_count:
                return True, made
            top = max(1, len(competing) // self.reduction_factor)  # the top ⌊n_k/η⌋ go on (at least one)
            bar = competing[-top] if maximize else competing[top - 1]
            if (value < bar) if maximize else (value > bar):
                return True, made
            rung += 1
        return False, made


def auto_min_resource(last_steps: Iterable[int | None]) -> int | None:
    """Successive halving's ``min_resource = "auto"``: ``max(1, ⌊max(last_steps) / 100⌋)`` over the last
    reported steps of the COMPLETE trials (None when none reported)."""
    steps = [s for s in last_steps if s is not None]
    return max(max(steps) // 100, 1) if steps else None


@dataclass(frozen=True)
class PercentileRule:
    """The percentile rule (median: ``percentile`` 50). After step ``k`` a trial stops when its best value
    reported so far, ``b = max_{j<=k} v_j`` (min when minimising; NaN reports ignored), is worse than the
    ``q``-th best value reported at step ``k`` by the COMPLETE trials that reported there:
    ``P = percentile_{100-q}({v_i(k)})`` (``percentile_q`` when minimising; linear interpolation between
    order statistics, numpy's ``nanpercentile``). It decides nothing with no COMPLETE trial or fewer than
    ``n_startup_trials``, before ``n_warmup_steps``, at steps other than the first report at or after each
    ``n_warmup_steps + j·interval_steps``, or while fewer than ``n_min_trials`` COMPLETE trials reported at
    ``k`` (``P`` undefined; an all-NaN ``b`` stops the trial). The rule of Optuna's PercentilePruner, whose
    decisions this one reproduces.
    """

    percentile: float
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1

    def due(self, step: int, previous: int) -> bool:
        """Whether a report at ``step`` after one at ``previous`` (-1: none) is a decision step."""
        if step < self.n_warmup_steps:
            return False
        w, i = self.n_warmup_steps, self.interval_steps
        return previous < (step - w) // i * i + w

    def prune(
        self, reports: Mapping[int, float], completed: Iterable[Mapping[int, float]], maximize: bool
    ) -> bool:
        """The verdict for a trial with ``reports`` (step → value; the last is the current step) given the
        reports of the study's COMPLETE trials."""
        import numpy as np

        completed = list(completed)
        if not completed or len(completed) < self.n_startup_trials or not reports:
            return False
        step = max(reports)
        if not self.due(step, max((s for s in reports if s != step), default=-1)):
            return False
        own = np.asarray(list(reports.values()), dtype=float)
        if np.isnan(own).all():
            return True
        best = float(np.nanmax(own) if maximize else np.nanmin(own))
        at_step = np.asarray([c[step] for c in completed if step in c], dtype=float)
        if len(at_step) < self.n_min_trials or np.isnan(at_step).all():
            return False
        bar = float(np.nanpercentile(at_step, 100 - self.percentile if maximize else self.percentile))
        return best < bar if maximize else best > bar


Rule = SuccessiveHalvingRule | PercentileRule

# the rule of each pruner make_pruner built, from the arguments it was built with (held no longer than it)
_RULES: weakref.WeakKeyDictionary[Any, Rule] = weakref.WeakKeyDictionary()


def _rule_from(kind: str, cls: type, kw: dict[str, Any]) -> Rule:
    """Our rule with the arguments ``cls(**kw)`` took, Optuna's defaults filled in from its signature."""
    bound = inspect.signature(cls).bind(**kw)
    bound.apply_defaults()
    args = dict(bound.arguments)
    if kind == "percentile":
        args.setdefault("percentile", 50.0)  # MedianPruner
        return PercentileRule(**args)
    if args["min_resource"] == "auto":
        args["min_resource"] = None
    return SuccessiveHalvingRule(**args)


def rule_of(pruner: optuna.pruners.BasePruner | Rule | None) -> Rule | None:
    """mergesearch's rule for ``pruner`` (successive halving, percentile, median), None for any other
    pruner (those decide through Optuna's ``should_prune``)."""
    if pruner is None or isinstance(pruner, (SuccessiveHalvingRule, PercentileRule)):
        return pruner
    try:
        return _RULES[pruner]
    except (KeyError, TypeError):
        pass
    from search.study.optuna_private import pruner_arguments

    args = pruner_arguments(pruner)  # a pruner built elsewhere (a test, a benchmark)
    if args is None:
        return None
    if "percentile" in args:
        return PercentileRule(**args)
    return SuccessiveHalvingRule(**args)


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
            return _remember(optuna.pruners.MedianPruner(**kw), "percentile", kw)
        if name == "percentile":
            kw = {"percentile": 25.0, "n_startup_trials": 3, "n_warmup_steps": 2}
            kw.update(opts)
            return _remember(optuna.pruners.PercentilePruner(**kw), "percentile", kw)
        if name == "successive_halving":
            kw = {"min_resource": max(1, (n_steps or 0) // 4), "reduction_factor": 3}
            kw.update(opts)
            return _remember(optuna.pruners.SuccessiveHalvingPruner(**kw), "successive_halving", kw)
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


def _remember(pruner: optuna.pruners.BasePruner, kind: str, kw: dict[str, Any]) -> optuna.pruners.BasePruner:
    """Keep our rule for ``pruner`` (Optuna validated the arguments by building it)."""
    try:
        _RULES[pruner] = _rule_from(kind, type(pruner), kw)
    except TypeError as err:  # not the study's fault: an Optuna outside search.study.optuna_private.OPTUNA_RANGE
        raise RuntimeError(
            f"{type(pruner).__name__} takes arguments search.study.pruners does not know: {err}"
        ) from None
    return pruner


def may_prune(pruner: optuna.pruners.BasePruner, step: int, n_complete: int) -> bool:
    """Whether ``pruner`` could stop a trial that has just reported ``step`` (steps done, 1-based) in a
    study with ``n_complete`` COMPLETE trials. False only when that is certain, which lets the coordinator
    queue the next step before the report instead of waiting for the decision. Assumes the coordinator's
    contract: a trial reports every step from 1 in order and asks for a decision after each report.

    The percentile rule decides nothing before ``max(1, n_startup_trials)`` complete trials, below
    ``n_warmup_steps``, or off its ``interval_steps`` grid (:meth:`PercentileRule.due`, the previous report
    being ``step - 1``); successive halving decides (and records the trial's rung value, so it must be
    asked then) only at its rung steps; ``NopPruner`` never prunes; any other pruner may always.
    tests/test_search_pruners.py checks this function against Optuna's own ``prune``.
    """
    import optuna

    if isinstance(pruner, optuna.pruners.NopPruner):
        return False
    rule = rule_of(pruner)
    if isinstance(rule, PercentileRule):
        if n_complete < max(1, rule.n_startup_trials):
            return False
        return rule.due(step, step - 1 if step > 1 else -1)
    if isinstance(rule, SuccessiveHalvingRule):
        return rule.is_rung(step)
    return True


def reports_step(pruner: optuna.pruners.BasePruner, step: int, n_complete: int) -> bool:
    """Whether the coordinator writes ``trial.report`` after ``step`` (one SQL write each) when no
    decision is due there: what a later decision or Optuna's samplers read back from the store.

    No pruner: nothing (the full per-item records are on disk). Successive halving: only its rung steps,
    where it decides (it compares the rung values it records, and TPE ranks a pruned trial by the value of
    the step it stopped at). Every other pruner: every step (percentile pruners compare other trials'
    values at each step, whichever steps those trials were decided at).
    """
    import optuna

    if isinstance(pruner, optuna.pruners.NopPruner):
        return False
    if isinstance(rule_of(pruner), SuccessiveHalvingRule):
        return may_prune(pruner, step, n_complete)
    return True
