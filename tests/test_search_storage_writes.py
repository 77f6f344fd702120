"""``search.study.storage.write_trial_attrs`` against Optuna's own one-attribute-per-call writes, on each store
the study can live in: SQLite, the real PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306), and a
storage that is not an RDB one (the per-attribute fallback). Service-backed cases skip without the server
unless MERGESEARCH_REQUIRE_SERVICES=1."""

from __future__ import annotations

import uuid

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError

from search.study.storage import write_trial_attrs
from tests.conftest import require

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}


def _storage(kind: str, tmp_path) -> optuna.storages.BaseStorage:
    if kind == "inmemory":
        return optuna.storages.InMemoryStorage()
    if kind == "sqlite":
        return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/w.db")
    try:
        return optuna.storages.RDBStorage(
            SERVERS[kind], engine_kwargs={"connect_args": {"connect_timeout": 3}}
        )
    except Exception as err:  # noqa: BLE001 - any failure to reach the server means: not available here
        require(False, f"{kind} is not reachable at {SERVERS[kind]}: {type(err).__name__}")
        raise


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb", "inmemory"])
def test_batched_writes_equal_one_call_per_attribute(kind, tmp_path):
    storage = _storage(kind, tmp_path)
    names = [f"writes-{uuid.uuid4().hex[:8]}-{side}" for side in ("batched", "reference")]
    batched, reference = (optuna.create_study(study_name=n, storage=storage) for n in names)
    try:
        ba, bb = batched.ask(), batched.ask()
        ra, rb = reference.ask(), reference.ask()
        rounds = [
            {0: ({"u": 1, "v": {"x": [1, 2], "y": "é"}}, {"completed_rung_0": 0.25}), 1: ({"u": 3}, {})},
            {0: ({"u": 5, "w": None}, {"completed_rung_0": 0.5, "completed_rung_1": 0.75})},  # replaces
        ]
        for writes in rounds:
            write_trial_attrs(batched, {(ba, bb)[i]._trial_id: attrs for i, attrs in writes.items()})
            for i, (user, system) in writes.items():
                trial = (ra, rb)[i]
                for key, value in user.items():
                    trial.set_user_attr(key, value)
                for key, value in system.items():
                    reference._storage.set_trial_system_attr(trial._trial_id, key, value)
        got, want = batched.get_trials(), reference.get_trials()
        assert [t.user_attrs for t in got] == [t.user_attrs for t in want]
        assert [t.system_attrs for t in got] == [t.system_attrs for t in want]
        assert got[0].user_attrs == {"u": 5, "v": {"x": [1, 2], "y": "é"}, "w": None}

        # a finished trial refuses the write, as Optuna's own call does
        batched.tell(ba, 1.0)
        reference.tell(ra, 1.0)
        with pytest.raises(UpdateFinishedTrialError):
            ra.set_user_attr("late", 1)
        with pytest.raises(UpdateFinishedTrialError):
            write_trial_attrs(batched, {ba._trial_id: ({"late": 1}, {})})
        assert "late" not in batched.trials[0].user_attrs
    finally:
        for n in names:
            optuna.delete_study(study_name=n, storage=storage)
