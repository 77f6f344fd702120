"""Crash tests with real processes: kill a Ray worker mid-trial, then kill -9 the coordinator, then resume.

The study runs as `mergesearch run` in its own process group; the test watches the SQLite store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.test_search_run import write_study

N_TRIALS = 8


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _cmd(path: Path) -> list[str]:
    return [sys.executable, "-m", "search.cli.main", "run", str(path), "--no-live", "--no-promote"]


_STORES: dict[str, optuna.storages.RDBStorage] = {}


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    if storage not in _STORES:  # one engine for all polls: a poll must be much faster than a trial
        _STORES[storage] = optuna.storages.RDBStorage(
            storage, engine_kwargs={"connect_args": {"timeout": 30}}
        )
    try:
        return optuna.load_study(study_name=name, storage=_STORES[storage]).get_trials()
    except KeyError:
        return []


def _wait(pred, storage, name, proc, what, timeout=240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        trials = _trials(storage, name)
        hit = pred(trials)
        if hit:
            return hit, trials
        assert proc.poll() is None, (
            f"coordinator exited before {what}: {proc.stdout.read() if proc.stdout else ''}"
        )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the local Ray processes this coordinator started
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _completed_retry(final: dict, number: int):
    """Follow ``retry_of`` links from a failed trial to the retry that completed (exactly one chain)."""
    nxt = [t for t in final.values() if t.user_attrs.get("retry_of") == number]
    assert len(nxt) == 1, f"trial {number} has {len(nxt)} retries"
    t = nxt[0]
    return t if t.state == TrialState.COMPLETE else _completed_retry(final, t.number)


def test_worker_death_then_coordinator_kill9_then_resume(tmp_path, toy_world_ci):
    storage = f"sqlite:///{tmp_path}/s.db"
    path = write_study(
        tmp_path / "s.toml",
        toy_world_ci,
        name="crash",
        storage=storage,
        out=tmp_path / "out",
        n_trials=N_TRIALS,
        limit=24,
        chunk=1,  # 48 chunks: trials last seconds, so the test can kill things mid-trial
    )
    proc = subprocess.Popen(
        _cmd(path),
        env=_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # 1. kill the worker process of a running trial
        def running_with_worker(ts):
            return next(
                (
                    t
                    for t in ts
                    if t.state == TrialState.RUNNING
                    and "worker" in t.user_attrs
                    and t.user_attrs.get("recipe")
                ),
                None,
            )

        victim, _ = _wait(running_with_worker, storage, "crash", proc, "a running trial")
        worker_pid = int(victim.user_attrs["worker"].split(":")[1].split("/")[0])
        os.kill(worker_pid, signal.SIGKILL)

        # 2. that trial is FAIL with its reason and re-enqueued with the same parameters
        def retried(ts):
            failed = next((t for t in ts if t.number == victim.number and t.state == TrialState.FAIL), None)
            retry = next((t for t in ts if t.user_attrs.get("retry_of") == victim.number), None)
            return (failed, retry) if failed and retry else None

        (failed, retry), _ = _wait(retried, storage, "crash", proc, "the retry of the killed trial")
        assert "died" in failed.user_attrs["fail_reason"]

        # 3. kill -9 the coordinator while trials run and some are complete
        def mid_study(ts):
            done = [t for t in ts if t.state == TrialState.COMPLETE]
            running = [t for t in ts if t.state == TrialState.RUNNING and t.user_attrs.get("recipe")]
            return (done, running) if len(done) >= 2 and running and len(done) < N_TRIALS - 2 else None

        (done_before, running_before), _ = _wait(mid_study, storage, "crash", proc, "mid-study")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_group(proc)
    snapshot = {t.number: t for t in _trials(storage, "crash")}
    interrupted = [t for t in snapshot.values() if t.state == TrialState.RUNNING]
    assert any("recipe_id" in t.user_attrs for t in interrupted), "the kill left no running trial to recover"

    # 4. the same command resumes and finishes the study
    r = subprocess.run(
        _cmd(path), env=_env(), capture_output=True, text=True, timeout=400, start_new_session=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    final = {t.number: t for t in _trials(storage, "crash")}
    complete = [t for t in final.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert not [t for t in final.values() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # completed trials were kept, not re-run: same numbers, same values, each recipe scored once
    for t in done_before:
        if t.number in snapshot and snapshot[t.number].state == TrialState.COMPLETE:
            assert final[t.number].state == TrialState.COMPLETE and final[t.number].value == t.value
    ids = [t.user_attrs["recipe_id"] for t in complete]
    table = "\n".join(f"{t.number} {t.state.name} {t.params} {t.user_attrs}" for t in final.values())
    assert len(ids) == len(set(ids)), table
    # the killed worker's trial and the interrupted trials re-ran with identical parameters
    for lost in [failed] + interrupted:
        assert final[lost.number].state == TrialState.FAIL
        again = [_completed_retry(final, lost.number)]  # a retry may itself have been interrupted
        if "recipe_id" in lost.user_attrs:  # fully suggested before the crash: the very same recipe
            assert again[0].params == lost.params
            assert again[0].user_attrs["recipe_id"] == lost.user_attrs["recipe_id"]
        else:  # killed while its parameters were being drawn: those drawn are kept, the rest drawn anew
            assert lost.params.items() <= again[0].params.items()
    for t in interrupted:
        assert "orphaned" in final[t.number].user_attrs["fail_reason"]
    assert "re-enqueued trials" in r.stdout
