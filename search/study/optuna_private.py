"""Every use of Optuna's private members in mergesearch, pinned to the Optuna releases it was checked on.

Optuna's public API has no way to do the five things below; each is used here and nowhere else
(tests/test_search_optuna_private.py fails when the installed Optuna leaves :data:`OPTUNA_RANGE`, when
``pyproject.toml`` asks for another range, and when a module outside this one reaches a private member of
an Optuna object). Moving to a new Optuna release means reading the Optuna source behind each function,
then widening the range here and in ``pyproject.toml``.

1. Ids. ``Study._storage`` (the storage wrapper Optuna built: ``_CachedStorage`` around our
   ``RDBStorage``), ``Study._study_id`` and ``Trial._trial_id`` / ``FrozenTrial._trial_id``. The storage API
   is public and keyed by these ids, but the objects expose them only privately. Writing through our own
   ``RDBStorage`` instead would bypass Optuna's read cache, which then serves stale running trials.
2. One transaction for many attributes (:func:`write_attrs_one_transaction`):
   ``RDBStorage._set_trial_attr_without_commit``, ``optuna.storages._rdb.models`` and
   ``optuna.storages._rdb.storage._create_scoped_session``. The public ``set_trial_user_attr`` commits
   once per attribute (~2.3 ms of CPU each on SQLite, against ~1.45 ms each in one transaction).
3. One read of the trials per ask (:func:`trials_read_once`): ``study.ask`` and TPE (``constant_liar``)
   call ``get_all_trials`` on the storage 6-8 times per ask, bypassing the study's per-thread trial cache;
   for the duration of one ask the storage object's ``get_all_trials`` serves one snapshot. The public
   alternative, a ``BaseStorage`` subclass wrapping ``RDBStorage``, loses Optuna's ``_CachedStorage``
   (only ``optuna.storages.get_storage``, "only for internal usage", builds one), whose incremental reads
   are what keeps a read cheap as the study grows.
4. The constructor arguments of an Optuna pruner built outside ``search.study.pruners.make_pruner``
   (:func:`pruner_arguments`): ``search.study.pruners`` runs its own pruning rules with the arguments
   ``make_pruner`` recorded; for a pruner object made elsewhere (a test, a benchmark) they are read back.
5. Nothing else: sampling, storage, Optuna's own pruners (Hyperband, Wilcoxon) go through the public API.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, TrialState

# the Optuna releases whose source the functions below were checked against (5.0.0 and 5.1.0: the
# private names used here are the same in both); pyproject.toml asks for exactly this range
OPTUNA_RANGE = (">=5.0", "<5.2")


def version_supported(version: str) -> bool:
    """Whether Optuna ``version`` lies in :data:`OPTUNA_RANGE` (a pre-release of the upper bound is outside)."""
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(",".join(OPTUNA_RANGE)).contains(version, prereleases=True)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage the study reads and writes through (Optuna's cache around the RDB storage)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (what ``get_all_trials`` and the trial-number lookup take)."""
    return study._study_id


def trial_id(trial: optuna.trial.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (what every ``set_trial_*`` call of the storage takes)."""
    return trial._trial_id


def write_attrs_one_transaction(
    study: optuna.Study, attrs: dict[int, tuple[dict[str, Any], dict[str, Any]]]
) -> bool:
    """``{trial_id: (user_attrs, system_attrs)}`` written in one transaction on an RDB storage, each row as
    ``set_trial_user_attr`` / ``set_trial_system_attr`` write it (an attribute already set is replaced).
    False, with nothing written, when the storage is no RDB storage (the caller writes one by one)."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in its read cache
    batch = getattr(backend, "_set_trial_attr_without_commit", None)
    if batch is None or not hasattr(backend, "scoped_session"):
        return False
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        for tid, (user, system) in attrs.items():
            for key, value in user.items():
                batch(session, models.TrialUserAttributeModel, tid, key, value)
            for key, value in system.items():
                batch(session, models.TrialSystemAttributeModel, tid, key, value)
    return True


@contextmanager
def trials_read_once(study: optuna.Study) -> Iterator[list[list[FrozenTrial]]]:
    """Inside the block, the study's trials are read from the store once: later reads get that snapshot,
    which the block's target list holds once read (for the caller to reuse after the block).

    For one ask and its suggestions, from the one thread that asks (the coordinator's store thread): the
    snapshot is what the repeated reads would return, up to other coordinators' writes of the same few
    milliseconds (which Optuna never orders against an ask anyway). The trial being asked is not in the
    snapshot (or is there as WAITING, when enqueued), and samplers leave it out in any case.
    """
    storage = study._storage
    read = storage.get_all_trials
    own_id = study._study_id
    snapshot: list[FrozenTrial] | None = None
    taken: list[list[FrozenTrial]] = []

    def get_all_trials(
        sid: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        nonlocal snapshot
        if sid != own_id:
            return read(sid, deepcopy=deepcopy, states=states)
        if snapshot is None:
            snapshot = read(sid, deepcopy=False)
            taken.append(snapshot)
        trials = snapshot if states is None else [t for t in snapshot if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    storage.get_all_trials = get_all_trials  # type: ignore[method-assign]
    try:
        yield taken
    finally:
        del storage.get_all_trials  # the class's method again


def pruner_arguments(pruner: optuna.pruners.BasePruner) -> dict[str, Any] | None:
    """The constructor arguments of Optuna's ``PercentilePruner`` (``MedianPruner``: percentile 50) or
    ``SuccessiveHalvingPruner`` (``min_resource`` None for ``"auto"``), by the names the constructor takes;
    None for any other pruner."""
    from optuna.pruners import PercentilePruner, SuccessiveHalvingPruner

    if isinstance(pruner, PercentilePruner):
        return {
            "percentile": pruner._percentile,
            "n_startup_trials": pruner._n_startup_trials,
            "n_warmup_steps": pruner._n_warmup_steps,
            "interval_steps": pruner._interval_steps,
            "n_min_trials": pruner._n_min_trials,
        }
    if isinstance(pruner, SuccessiveHalvingPruner):
        return {
            "min_resource": pruner._min_resource,
            "reduction_factor": pruner._reduction_factor,
            "min_early_stopping_rate": pruner._min_early_stopping_rate,
            "bootstrap_count": pruner._bootstrap_count,
        }
    return None
