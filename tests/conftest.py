"""Shared test setup: one torch thread (the machine is shared), and service/browser gating.

Tests that need PostgreSQL, MariaDB or Chromium call :func:`require`: on a user's machine without the
service they skip and say why; with MERGESEARCH_REQUIRE_SERVICES=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

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
