"""Study storage: a database URL → an Optuna RDB storage and the study of a :class:`StudySpec`.

SQLite is the default (one coordinator is the only writer, which SQLite handles); PostgreSQL and MySQL
URLs get ``pool_pre_ping`` so connections idle during long trials are re-opened instead of failing
(Optuna #5600). Passwords never reach a message: every URL shown goes through :func:`mask_url`.
Optuna does not store the sampler or pruner, so :func:`open_study` rebuilds them from the spec each time.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_core.errors import MergesearchError
from search.study.db_url import mask_url

if TYPE_CHECKING:
    import optuna

    from search.study.spec import StudySpec

log = logging.getLogger(__name__)


class StorageError(MergesearchError):
    """The study storage cannot be opened (bad URL, unwritable path, server unreachable, no such study)."""


def _mask_text(text: str, url: str) -> str:
    """``text`` (e.g. a driver error) with the URL's password removed wherever it appears."""
    try:
        from sqlalchemy.engine import make_url

        pw = make_url(url).password
    except Exception:
        pw = None
    text = text.replace(url, mask_url(url))
    return text.replace(str(pw), "***") if pw else text


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other back-ends and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    return Path(db) if db and db != ":memory:" else None


def check_storage_url(url: str) -> None:
    """Fail fast, before Ray starts, on an unusable URL: unknown scheme, missing driver, unwritable file."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(url)
        u.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise StorageError(
            f"storage {mask_url(url)!r} is not a usable database URL ({err}); "
            "use sqlite:///path.db, postgresql+psycopg2://user@host/db or mysql+pymysql://..."
        ) from None
    except ModuleNotFoundError as err:
        raise StorageError(
            f"storage {mask_url(url)!r} needs the Python driver {err.name!r}; "
            "pip install mergesearch[postgres] or mergesearch[mysql]"
        ) from None
    path = sqlite_path(url)
    if path is not None:
        parent = path.expanduser().absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(
                f"storage path {path}: cannot create its folder {parent} ({err.strerror}); "
                "choose a writable location in `storage`"
            ) from None
        target = path if path.exists() else parent
        if not os.access(target, os.W_OK) or (path.exists() and not path.is_file()):
            raise StorageError(
                f"storage path {path} is not writable; choose a writable location in `storage`"
            )


def _sqlite_creator(path: Path) -> Callable[[], Any]:
    """Connections in WAL mode with ``synchronous=NORMAL``: a commit costs ~2 ms instead of ~20 ms
    (a trial costs ~12 commits: its parameters, reports, attributes and tell), and readers (status,
    dashboard) do not block the writer. WAL needs a local file system, which a SQLite study should be on
    anyway."""
    import sqlite3

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return connect


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url``; ``pool_pre_ping`` on servers, a long lock timeout on SQLite."""
    import optuna
    import sqlalchemy.exc

    check_storage_url(url)
    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        engine_kwargs = {"connect_args": {"timeout": 60}}
        if path is not None:
            engine_kwargs = {"creator": _sqlite_creator(path)}
    else:
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 3600}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as err:
        msg = _mask_text(str(err).splitlines()[0] if str(err) else type(err).__name__, url)
        raise StorageError(
            f"storage {mask_url(url)!r} cannot be opened: {msg}; "
            "check that the server runs and the URL is right"
        ) from None


def open_study(
    spec: StudySpec, *, create: bool = True, storage: str | None = None, with_sampler: bool = True
) -> optuna.Study:
    """The Optuna study of ``spec`` (created when ``create``), with its sampler and pruner rebuilt.

    ``storage`` overrides ``spec.storage`` (the CLI's ``--storage``). With ``create=False`` a study that
    does not exist raises :class:`StorageError`. Directions must match the stored study's.
    """
    import optuna

    from search.study.pruners import make_pruner
    from search.study.samplers import make_sampler

    url = storage or spec.storage
    rdb = make_storage(url)
    sampler = make_sampler(spec) if with_sampler else None
    pruner = make_pruner(spec) if with_sampler else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if create:
        study = optuna.create_study(
            study_name=spec.name,
            storage=rdb,
            sampler=sampler,
            pruner=pruner,
            directions=spec.directions,
            load_if_exists=True,
        )
    else:
        try:
            study = optuna.load_study(study_name=spec.name, storage=rdb, sampler=sampler, pruner=pruner)
        except KeyError:
            raise StorageError(
                f"no study named {spec.name!r} in {mask_url(url)}; "
                f"run `mergesearch run {spec.path or 'STUDY.toml'}` first"
            ) from None
    stored = [d.name.lower() for d in study.directions]
    if stored != spec.directions:
        raise StorageError(
            f"study {spec.name!r} in {mask_url(url)} has directions {stored}, but the study file "
            f"asks for {spec.directions} (objectives.mode); use another study name"
        )
    return study


def trials_read_once(study: optuna.Study) -> AbstractContextManager[list[list[optuna.trial.FrozenTrial]]]:
    """Inside the block, the study's trials are read from the store once: later reads get that snapshot,
    which the block's target list holds once read (for the caller to reuse after the block).

    For one ask and its suggestions. ``study.ask`` reads every trial to find an enqueued one, and TPE
    with ``constant_liar`` (and ``group``) reads every trial again for each parameter group, bypassing
    Optuna's per-trial cache because another thread might be adding parameters meanwhile: on SQLite 6-8
    reads of ~5 ms each per trial, most of the cost of an ask. The coordinator asks from one thread only,
    so the snapshot is what those reads would return (``search.study.optuna_private.trials_read_once``, which
    says why no public API does it).
    """
    from search.study.optuna_private import trials_read_once as read_once

    return read_once(study)


def write_trial_attrs(
    study: optuna.Study,
    attrs: dict[int, tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    """Set user and system attributes of running trials, ``{trial_id: (user_attrs, system_attrs)}``.

    The rows are those of ``Trial.set_user_attr`` / ``storage.set_trial_system_attr`` (an attribute
    already set is replaced), written in order. On an RDB storage they go in one transaction: Optuna
    commits each of those calls on its own, a session and a commit per attribute (on SQLite here ~2.3 ms
    of CPU each; the same four attributes in one transaction cost ~1.45 ms each). Other storages get one
    call per attribute. Not atomic: the first write that fails raises (a trial finished meanwhile:
    ``UpdateFinishedTrialError``) and the writes after it are not made; those before it may be kept,
    since Optuna's check reads the finished trial through the same session and commits it.
    """
    from search.study.optuna_private import storage_of, write_attrs_one_transaction

    if write_attrs_one_transaction(study, attrs):
        return
    storage = storage_of(study)
    for trial_id, (user, system) in attrs.items():
        for key, value in user.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system.items():
            storage.set_trial_system_attr(trial_id, key, value)
