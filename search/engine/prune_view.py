"""Pruning decisions from the coordinator's copy of the study, so a worker never waits on the store.

``trial.should_prune()`` reads the running trial back and every trial of the study, and Optuna's
successive halving also writes the trial's rung value: three or four queries, 10-20 ms on SQLite, while
the worker waits for the verdict. :class:`StudyView` applies mergesearch's own rules
(``search.study.pruners.SuccessiveHalvingRule`` and ``PercentileRule``, which reproduce Optuna's pruners of the
same arguments) to data in memory: the trials as last read from the store (re-read every ``max_age_s``, and
after each trial this coordinator completes when the rule compares with completed trials), the running
trial's intermediate values and the rung records this coordinator made. Those records
(``completed_rung_<k>``) are kept in memory and written by :meth:`StudyView.flush` once the worker has its
next call. The coordinator refreshes and flushes on its store thread (``auto_refresh=False``) while its loop
decides: the trial list is replaced whole, never changed in place, so a decision reads one consistent copy.

Pruners without such a rule (Hyperband, Wilcoxon) keep ``should_prune`` (:func:`local_decision`).
tests/test_search_dispatch.py runs both paths side by side on twin studies and compares every verdict and
every stored rung record.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Container, Iterator
from typing import TYPE_CHECKING, Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.study.optuna_private import trial_id as id_of
from search.study.pruners import (
    RUNG_PREFIX,
    PercentileRule,
    SuccessiveHalvingRule,
    auto_min_resource,
    rule_of,
)
from search.study.storage import write_trial_attrs

if TYPE_CHECKING:
    import optuna


class StudyView:
    """The study as the pruning rules read it (trials, direction, rung records), from memory."""

    def __init__(
        self,
        study: optuna.Study | None,
        max_age_s: float = 2.0,
        auto_refresh: bool = True,
        direction: StudyDirection | None = None,
    ) -> None:
        self._study = study  # None: a view of records only (see of_records)
        self.max_age_s = max_age_s
        self.auto_refresh = (
            auto_refresh  # False: the owner calls refresh (the coordinator, on its store thread)
        )
        self._lock = threading.Lock()
        self.direction: StudyDirection = study.directions[0] if study is not None else direction
        self._trials: list[FrozenTrial] = []
        self._pending: list[tuple[int, str, Any]] = []
        self._local: dict[int, dict[str, Any]] = {}  # rung records made here, by trial id
        self._min_resource: int | None = None  # successive halving's "auto", once estimated
        self._at = -1e9

    @classmethod
    def of_records(cls, direction: StudyDirection, records: dict[int, dict[str, Any]]) -> StudyView:
        """A view of a study known only by its trials' rung records; it has no store behind it, so it is
        never refreshed or flushed."""
        view = cls(None, max_age_s=float("inf"), auto_refresh=False, direction=direction)
        view._trials = [_running(-1, tid, attrs) for tid, attrs in records.items()]
        return view

    def recorded(self, trial_id: int) -> dict[str, Any]:
        """The rung records made here for ``trial_id`` (not yet read back from the store)."""
        with self._lock:
            return dict(self._local.get(trial_id, {}))

    def record(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Rung records made elsewhere (a worker's gate): kept and flushed as if made here."""
        with self._lock:
            for key, value in attrs.items():
                self._pending.append((trial_id, key, value))
                self._local.setdefault(trial_id, {})[key] = value

    def rung_records(self, prefix: str = RUNG_PREFIX) -> dict[int, dict[str, Any]]:
        """Trial id → its system attributes whose key starts with ``prefix``, for trials that have any."""
        out = {}
        for t in self.get_trials(deepcopy=False):
            attrs = {k: v for k, v in t.system_attrs.items() if k.startswith(prefix)}
            if attrs:
                out[id_of(t)] = attrs
        return out

    def refresh(self, force: bool = False, trials: list[FrozenTrial] | None = None) -> None:
        """Re-read every trial when forced or older than ``max_age_s`` (pending writes are flushed first);
        ``trials``: a read of the study the caller made, taken instead of another (the records this view made
        stay in its own copy, laid over any read, so one older than the last flush loses none of them)."""
        if force or trials is not None or time.monotonic() - self._at > self.max_age_s:
            if trials is None:
                self.flush()
                assert self._study is not None, "a view of records has no store to read"
                trials = self._study.get_trials(deepcopy=False)
            # the list is replaced, never changed, so a decision in another thread reads one whole copy; the
            # rung records stay in _local (a few keys per trial): those made after the flush are not read
            self._trials = trials
            self._at = time.monotonic()

    def flush(self, user_attrs: dict[int, dict[str, Any]] | None = None) -> None:
        """Write the rung records made here to the store (a view of records has none), in one transaction
        with ``user_attrs`` (trial id → user attributes) when given."""
        if self._study is None:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        writes: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {
            tid: (dict(attrs), {}) for tid, attrs in (user_attrs or {}).items()
        }
        for tid, key, value in pending:
            writes.setdefault(tid, ({}, {}))[1][key] = value
        if writes:
            write_trial_attrs(self._study, writes)

    @property
    def n_complete(self) -> int:
        return sum(1 for t in self._trials if t.state == TrialState.COMPLETE)

    def get_trials(
        self, deepcopy: bool = False, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        """The trials as last read, with the rung records made since (never the store's own objects:
        those belong to Optuna's cache)."""
        out = []
        seen = set()
        for t in self._trials:
            tid = id_of(t)
            seen.add(tid)
            if states is not None and t.state not in states:
                continue
            extra = self._local.get(tid)
            if extra:
                t = copy.copy(t)
                t.system_attrs = {**t.system_attrs, **extra}
            out.append(t)
        if states is None or TrialState.RUNNING in states:
            # this coordinator's trials asked since the last read still compete at the rungs they reached
            for tid, attrs in list(self._local.items()):
                if tid not in seen:
                    out.append(_running(-1, tid, attrs))  # known by its rung records only
        return out

    def decide(
        self,
        pruner: optuna.pruners.BasePruner,
        number: int,
        trial_id: int,
        intermediate_values: dict[int, float],
        system_attrs: dict[str, Any],
    ) -> bool:
        """The rule of ``pruner`` on running trial ``number`` with its reports so far; ``system_attrs`` (the
        trial's, as this coordinator holds them) receives the rung records the decision makes. Requires
        :func:`local_decision`."""
        if self.auto_refresh:
            self.refresh()
        rule = rule_of(pruner)
        if not intermediate_values:
            return False
        maximize = self.direction == StudyDirection.MAXIMIZE
        if isinstance(rule, PercentileRule):
            done = self.get_trials(states=(TrialState.COMPLETE,))
            return rule.prune(intermediate_values, [t.intermediate_values for t in done], maximize)
        assert isinstance(rule, SuccessiveHalvingRule), f"no rule of mergesearch decides {pruner!r}"
        min_resource = rule.min_resource
        if min_resource is None:  # "auto": estimated once, from the first COMPLETE trials seen
            if self._min_resource is None:
                done = self.get_trials(states=(TrialState.COMPLETE,))
                self._min_resource = auto_min_resource(t.last_step for t in done)
            min_resource = self._min_resource
        step = max(intermediate_values)

        def others() -> Iterator[dict[str, Any]]:  # read only at a rung step
            for t in self.get_trials():
                if id_of(t) != trial_id:
                    yield t.system_attrs

        own = {**system_attrs, **self.recorded(trial_id)}
        pruned, made = rule.prune(step, intermediate_values[step], own, others(), maximize, min_resource)
        if made:
            self.record(trial_id, made)
        system_attrs.update(made)
        return pruned


def _running(
    number: int,
    trial_id: int,
    system_attrs: dict[str, Any],
    intermediate_values: dict[int, float] | None = None,
) -> FrozenTrial:
    """A RUNNING trial as the rules read it: its reports and its system attributes (rung values)."""
    return FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=None,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs=dict(system_attrs),
        intermediate_values=dict(intermediate_values or {}),
        trial_id=trial_id,
    )


def local_decision(pruner: optuna.pruners.BasePruner) -> bool:
    """Whether :meth:`StudyView.decide` can stand in for ``should_prune`` with ``pruner``."""
    return rule_of(pruner) is not None
