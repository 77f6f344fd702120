"""Shared toy-world fixtures: ``toy_world_ci`` builds the "ci" toy world once per test session;
``toy_world_full`` finds the full seed-0 world in the user's cache, or builds it there once per machine.

tests/conftest.py registers this module as a plugin, so any test can ask for either.
The ci world is built through the real build path (``objectives.toy.build_toy_world``) into the session's
temporary ``$MERGESEARCH_CACHE`` (set by conftest), so each session exercises training, saving and
benchmark writing end to end (~20-40 s), and study files naming ``toy = {seed = 0, size = "ci"}`` resolve to
the same build, in-process or in a `mergesearch run` subprocess.

The full world (the one ``make demo`` searches) takes minutes to train, so it lives in
``$MERGESEARCH_USER_CACHE`` (conftest: the user's own cache root) and survives the session. When a
session's selected tests need it and it is not there, the build starts in a child process as soon as
collection ends, beside the tests that run first (the suite runs on one torch thread; the build uses its
own fixed thread counts, so its weights do not depend on that), and the fixture waits for it: on a fresh
machine most of the build hides behind the rest of the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from objectives.toy import ToyWorld, build_toy_world
from objectives.toy.build import MANIFEST, world_dir

FULL_SEED = 0
FULL_FIXTURE = "toy_world_full"
# SIGTERM (session end before the fixture ran) exits through Python, so build_into's clean-up of its
# temporary directory runs
_CHILD = (
    "import signal, sys\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
    "from objectives.toy import build_toy_world\n"
    "build_toy_world(int(sys.argv[1]), size=sys.argv[2], cache_dir=sys.argv[3])\n"
)


def user_cache() -> Path:
    """The persistent cache root for the full world (``$MERGESEARCH_USER_CACHE``, set by conftest)."""
    return Path(os.environ["MERGESEARCH_USER_CACHE"])


class _Background:
    """The one child process building the full world this session (None until one is started)."""

    proc: subprocess.Popen | None = None
    log: Path | None = None
    built_here = False  # this session trained the world (so its manifest names this torch)


def _full_cached() -> bool:
    return (world_dir(FULL_SEED, "full", user_cache()) / MANIFEST).is_file()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the full world's build in the background when a selected test needs it and it is missing."""
    if _Background.proc is not None or session.config.option.collectonly or _full_cached():
        return
    if not any(FULL_FIXTURE in getattr(item, "fixturenames", ()) for item in session.items):
        return
    fd, log = tempfile.mkstemp(prefix="mergesearch-full-world-", suffix=".log")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # no spinning threads beside the suite's own
    with os.fdopen(fd, "w") as out:
        _Background.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(FULL_SEED), "full", str(user_cache())],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    _Background.log = Path(log)
    _Background.built_here = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop a build no test waited for (an interrupted or failing session), and remove its log."""
    proc = _Background.proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if _Background.log is not None:
        _Background.log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def toy_world_ci() -> ToyWorld:
    """The seed-0 "ci" toy world (VLM, LLM, base checkpoints + MathVista_TOY / MathVision_TOY and proxies)."""
    return build_toy_world(0, size="ci")


@pytest.fixture(scope="session")
def toy_world_full() -> ToyWorld:
    """The seed-0 full toy world in the user's cache: the background build's (waited for), the cached one,
    or, when neither, built here."""
    proc = _Background.proc
    if proc is not None:
        rc = proc.wait()
        if rc != 0:
            tail = _Background.log.read_text()[-3000:] if _Background.log else ""
            pytest.fail(f"building the full toy world into {user_cache()} failed (exit {rc}):\n{tail}")
    elif not _full_cached():
        _Background.built_here = True
    return build_toy_world(FULL_SEED, size="full", cache_dir=user_cache())


@pytest.fixture(scope="session")
def toy_world_full_built_here(toy_world_full: ToyWorld) -> bool:
    """Whether this session trained the full world (else it came from the cache, maybe another torch's)."""
    return _Background.built_here
