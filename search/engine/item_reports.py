"""Per-item reports for pruners that test items, not running means: Optuna's WilcoxonPruner.

WilcoxonPruner pairs a trial's intermediate values with the best trial's at the same steps and stops the
trial when a one-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) says it is worse at
``p < p_threshold``. Fed the running objective once per proxy step it would pair 3 numbers; fed every
item's weighted correctness at the item's index (``trial.report(w_d / mean(w) · correct, i)``, i = the
item's position in the trial's step plan, the same for every trial) it pairs every item scored so far on
the same items, which is the test the items support.

Where it runs: on the coordinator, through the store (``trial.report`` per item, then ``should_prune``).
The worker-side gate (``search.engine.gate``) carries only successive halving's rung records, and the pruner view
(``search.engine.prune_view``) decides only for pruners that read the trial list; Wilcoxon reads
``study.best_trial`` and its per-item values, so each step waits for the verdict after one store write per
item (benchmarks/search_pruning.py --throughput measures what that costs).

Known limit: TPE ranks a pruned trial by its last reported step and value; with per-item steps that is the
number of items it reached and the correctness of its last item, a coarser ranking than a running mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def per_item(pruner: optuna.pruners.BasePruner) -> bool:
    """Whether ``pruner`` is fed per-item reports (WilcoxonPruner) instead of one report per step."""
    from optuna.pruners import WilcoxonPruner

    return isinstance(pruner, WilcoxonPruner)


def item_value(record: dict[str, Any], weights: dict[str, float]) -> float:
    """``w_d / mean(w)`` if the item is correct, else 0: over a trial with equal item counts per dataset,
    the mean of these is the weighted objective (``search.study.objective_values.weighted_value``)."""
    mean_w = sum(weights.values()) / len(weights)
    return weights[record["dataset"]] / mean_w if record["correct"] else 0.0


def report_items(
    trial: optuna.Trial, records: list[dict[str, Any]], first: int, last: int, weights: dict[str, float]
) -> None:
    """``trial.report(item_value(records[i]), i)`` for items ``first .. last - 1`` (in step order)."""
    for i in range(first, min(last, len(records))):
        trial.report(item_value(records[i], weights), i)


def items_before(steps: list[list[Any]], k: int) -> int:
    """Items in the first ``k`` steps of the worker's plan (``[[dataset, n], ...]`` per step)."""
    return sum(int(n) for step in steps[:k] for _, n in step)
