"""Shared test setup: one torch thread (the machine is shared), and service/browser gating.

Tests that need PostgreSQL, MariaDB or Chromium call :func:`require`: on a user's machine without the
service they skip and say why; with MERGESEARCH_REQUIRE_SERVICES=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The user's own cache, read before the session's replaces $MERGESEARCH_CACHE: the full toy world (minutes
# to train) is built there once per machine for tests/test_toy_properties.py (tests/toy_fixtures.py); a
# fresh CI machine builds it each run. Default: the product's cache root (objectives.toy.build.cache_root),
# so a machine that ran `make demo` already holds it.
os.environ.setdefault(
    "MERGESEARCH_USER_CACHE",
    os.environ.get("MERGESEARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mergesearch"),
)
# Hermetic cache: each session builds the "ci" toy world through the real build path, once, and every
# test and subprocess (`mergesearch run` inherits the environment) shares that one build.
_SESSION_CACHE = tempfile.mkdtemp(prefix="mergesearch-test-cache-")
os.environ["MERGESEARCH_CACHE"] = _SESSION_CACHE

pytest_plugins = ["tests.toy_fixtures"]

import torch  # noqa: E402

torch.set_num_threads(1)

REQUIRED = os.environ.get("MERGESEARCH_REQUIRE_SERVICES") == "1"


def require(available: bool, why: str) -> None:
    """Skip (locally) or fail (in CI) when a required external service is unavailable."""
    if available:
        return
    if REQUIRED:
        pytest.fail(f"required by MERGESEARCH_REQUIRE_SERVICES=1: {why}")
    pytest.skip(why)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
