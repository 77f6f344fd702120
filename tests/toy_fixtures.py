"""Shared toy-world fixtures: ``toy_world_ci`` builds the "ci" toy world once per test session.

tests/conftest.py registers this module as a plugin, so any test can ask for ``toy_world_ci``.
The world is built through the real build path (``objectives.toy.build_toy_world``) into the session's
temporary ``$MERGESEARCH_CACHE`` (set by conftest), so each session exercises training, saving and
benchmark writing end to end (~20-40 s), and study files naming ``toy = {seed = 0, size = "ci"}`` resolve to
the same build, in-process or in a `mergesearch run` subprocess.
"""

from __future__ import annotations

import pytest

from objectives.toy import ToyWorld, build_toy_world


@pytest.fixture(scope="session")
def toy_world_ci() -> ToyWorld:
    """The seed-0 "ci" toy world (VLM, LLM, base checkpoints + MathVista_TOY / MathVision_TOY and proxies)."""
    return build_toy_world(0, size="ci")
