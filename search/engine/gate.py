"""Successive halving decided on the worker, so a worker goes on at a rung without a round trip.

Waiting at a rung for the coordinator's verdict would cost one Ray round trip (~3 ms here) plus the
coordinator's turn, for most trials of a pruned toy study, whose trials last ~0.5 s. So the step
after which successive halving may act carries a :class:`Gate`: the rule (``search.study.pruners.SuccessiveHalvingRule``,
ASHA), the rung records of the study as the coordinator holds them when it sends the step, and the dataset
weights. The worker computes the running objective from the trial's records, applies the rule to those
records and keeps the verdict. The calls queued behind it carry a condition
(:class:`When`): the trial's next step runs only if the trial goes on, the next trial's first step only if
it stopped; the other one returns at once, marked skipped. The verdict and the rung value the pruner
recorded come back with the step's result; the coordinator writes them to the store.

Semantics. With one worker the verdict is the one ``trial.should_prune()`` would give (the worker adds
the rung records of its own earlier decisions to what the coordinator sent). With several, a rung record
another worker makes while the step runs is not among the competitors, as if it had arrived a step later:
successive halving's asynchronous form (ASHA) already decides on whichever trials reached the rung first.
Only successive halving is gated (its rule reads nothing but rung records); median, percentile and
Hyperband keep the coordinator's decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from optuna.study import StudyDirection

from search.study.objective_values import running_scores, weighted_value
from search.study.pruners import RUNG_PREFIX, SuccessiveHalvingRule, rule_of

if TYPE_CHECKING:
    import optuna

__all__ = ["RUNG_PREFIX", "Gate", "GateBook", "When", "gates"]


class When(NamedTuple):
    """Run a call only if trial ``trial_id``'s gate after ``step`` steps decided ``pruned``."""

    trial_id: int
    step: int
    pruned: bool


@dataclass(frozen=True)
class Gate:
    """What a worker needs to make the pruner's decision after the step it carries (see module docstring)."""

    pruner: SuccessiveHalvingRule  # an Optuna SuccessiveHalvingPruner given here is replaced by its rule
    direction: StudyDirection
    number: int
    trial_id: int
    step: int  # the report's step: steps done once this call ends
    weights: dict[str, float]  # dataset → weight, in the workers' dataset order
    rungs: dict[int, dict[str, Any]]  # trial id → its rung records, as the coordinator holds them
    binding: bool = True  # False for a baseline: its rung values are recorded, it is never stopped

    def __post_init__(self) -> None:
        # the worker needs the rule only (a few integers), not Optuna's pruner object
        rule = rule_of(self.pruner)
        if not isinstance(rule, SuccessiveHalvingRule) or rule.min_resource is None:
            raise ValueError(
                f"a gate decides successive halving with a known min_resource, not {self.pruner!r}"
            )
        object.__setattr__(self, "pruner", rule)

    def decide(self, records: list[dict[str, Any]], own: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The rule on the trial with ``records`` (all its steps so far) against ``rungs`` plus ``own`` (the
        rung records of this worker's earlier decisions): ``{"pruned", "value", "attrs"}``, the verdict
        (False whenever not ``binding``), the running objective and the rung records this decision made."""
        value = weighted_value(running_scores(records, tuple(self.weights)), self.weights)
        rungs = {tid: dict(attrs) for tid, attrs in self.rungs.items()}
        for tid, attrs in own.items():
            rungs.setdefault(tid, {}).update(attrs)
        mine = rungs.pop(self.trial_id, {})
        pruned, made = self.pruner.prune(
            self.step, value, mine, rungs.values(), self.direction == StudyDirection.MAXIMIZE
        )
        return {"pruned": pruned and self.binding, "value": value, "attrs": made}


def gates(pruner: optuna.pruners.BasePruner, multi_objective: bool) -> bool:
    """Whether a worker decides for ``pruner`` (successive halving with a known ``min_resource``, single
    objective; with ``"auto"`` the coordinator's view estimates it from the study's trials)."""
    rule = rule_of(pruner)
    return isinstance(rule, SuccessiveHalvingRule) and rule.min_resource is not None and not multi_objective


@dataclass
class GateBook:
    """A worker's side of the protocol: the records of the trial it is scoring, its verdicts and the rung
    records it made. One per worker; the calls of one trial reach a worker in order, none interleaved."""

    records: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[tuple[int, int], bool] = field(default_factory=dict)
    rungs: dict[int, dict[str, Any]] = field(default_factory=dict)

    def admits(self, when: When | None) -> bool:
        """Whether a call with condition ``when`` runs: its gate decided as it requires. A gate that never
        decided (its step raised or was skipped) admits nothing; the coordinator sends again what it needs."""
        if when is None:
            return True
        verdict = self.verdicts.get((when.trial_id, when.step))
        return verdict is not None and verdict == when.pruned

    def after_step(self, k: int, records: list[dict[str, Any]], gate: Gate | None) -> dict[str, Any] | None:
        """Keep step ``k``'s records (a trial starts at step 0) and, with a gate, decide."""
        if k == 0:
            self.records = []
        self.records.extend(records)
        if gate is None:
            return None
        out = gate.decide(self.records, self.rungs)
        self.verdicts[(gate.trial_id, gate.step)] = out["pruned"]
        self.rungs.setdefault(gate.trial_id, {}).update(out["attrs"])
        return out
