"""The cluster path for real: a Ray head started separately (`ray start --head`), two coordinators joining it
with `--ray-address` and sharing one study on the real PostgreSQL; then a resume that finds nothing to do.

Needs PostgreSQL on 127.0.0.1:5432 (database `test`, user postgres); skips without it unless
MERGESEARCH_REQUIRE_SERVICES=1. Only the Ray processes this test started are stopped (by pid).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import require
from tests.test_search_run import write_study

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
N_TRIALS = 8


def _pg_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3
        ).close()
        return True
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _ray_pids(marker: str) -> list[int]:
    """Processes whose command line names this test's Ray temp dir or port (the ones `ray start` made)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and int(d.name) != os.getpid():
            pids.append(int(d.name))
    return pids


@pytest.fixture
def ray_head():
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rs6_", dir="/tmp")  # short: Ray's socket paths have a length limit
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for marker in (temp, f"--gcs-address=127.0.0.1:{port}", f"--port={port}"):
            for pid in _ray_pids(marker):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(temp, ignore_errors=True)


def test_two_coordinators_on_a_ray_cluster_with_postgres(tmp_path, toy_world_ci, ray_head):
    require(_pg_available(), "PostgreSQL is not reachable on 127.0.0.1:5432 (database test)")
    name = f"cluster_{uuid.uuid4().hex[:10]}"
    path = write_study(
        tmp_path / "s.toml",
        toy_world_ci,
        name=name,
        storage=PG,
        out=tmp_path / "out",
        n_trials=N_TRIALS,
        workers=1,
        limit=48,  # 24 chunks per trial: trials outlast the second coordinator's start, so both get some
        chunk=2,
    )
    cmd = [
        sys.executable,
        "-m",
        "search.cli.main",
        "run",
        str(path),
        "--ray-address",
        ray_head,
        "--no-live",
        "--no-promote",
    ]
    storage = optuna.storages.RDBStorage(PG, engine_kwargs={"pool_pre_ping": True})
    try:
        a = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t0 = time.time()
        while time.time() - t0 < 180:  # B starts once A has created the study and enqueued the baselines
            try:
                if optuna.load_study(study_name=name, storage=storage).get_trials(
                    states=(TrialState.WAITING,)
                ):
                    break
            except KeyError:
                pass
            assert a.poll() is None, a.stdout.read()
            time.sleep(0.3)
        b = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out_a, _ = a.communicate(timeout=400)
        out_b, _ = b.communicate(timeout=400)
        assert a.returncode == 0, out_a
        assert b.returncode == 0, out_b
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        table = "\n".join(f"{t.number} {t.state.name} {t.user_attrs.get('fail_reason')}" for t in trials)
        assert len(complete) == N_TRIALS, table  # none lost
        ids = [t.user_attrs["recipe_id"] for t in complete]
        assert len(set(ids)) == len(ids), table  # none duplicated
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], table
        for t in trials:  # the only failures allowed are trials that lost the race for the last budget slot
            if t.state == TrialState.FAIL:
                assert t.user_attrs["fail_reason"].startswith("surplus"), table
        owners = {t.user_attrs["coordinator"] for t in complete}
        assert len(owners) == 2, "both coordinators ran trials"
        assert sum(1 for t in complete if t.user_attrs.get("baseline")) == 2  # baselines enqueued once
        hosts = {t.user_attrs["worker"].split(":")[0] for t in complete}
        assert hosts == {socket.gethostname()}
        # resume: the study is complete, so a rerun adds nothing and changes nothing
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "nothing to do: n_trials reached" in r.stdout
        again = optuna.load_study(study_name=name, storage=storage).get_trials()
        assert [(t.number, t.state, t.values) for t in again] == [
            (t.number, t.state, t.values) for t in trials
        ]
        assert "postgresql+psycopg2://postgres@127.0.0.1:5432/test" in r.stdout  # the store it used, named
    finally:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
