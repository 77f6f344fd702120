"""search.study.optuna_private: the one place that touches Optuna's private members, pinned to an Optuna range.

Fails when the installed Optuna leaves that range (read the Optuna source behind each function of the
module before widening it), when pyproject.toml asks for another range, and when any other module of the
product reaches a private member of an Optuna object.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import optuna
import pytest

from search.study.optuna_private import OPTUNA_RANGE, version_supported

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_optuna_is_in_the_pinned_range():
    assert version_supported(optuna.__version__), (
        f"Optuna {optuna.__version__} is outside {OPTUNA_RANGE}: check every function of "
        "search/study/optuna_private.py against its source, then widen the range there and in pyproject.toml"
    )


@pytest.mark.parametrize(
    "version,inside",
    [
        ("4.9.0", False),
        ("5.0.0", True),
        ("5.1.0", True),
        ("5.1.7", True),
        ("5.2.0rc1", False),
        ("5.2.0", False),
    ],
)
def test_the_range_bounds(version, inside):
    assert version_supported(version) is inside


def test_pyproject_asks_for_the_pinned_range():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    optuna_deps = [d.replace(" ", "") for d in deps if re.match(r"optuna\s*[<>=!~]", d)]
    assert optuna_deps == ["optuna" + ",".join(OPTUNA_RANGE)]


# a private member of an Optuna object (the study, its storage, a trial, a pruner), a private Optuna module
PRIVATE = re.compile(
    r"\b(?!self\b)\w+\._(storage|study_id|trial_id|backend|thread_local|get_trials|min_resource|"
    r"reduction_factor|min_early_stopping_rate|bootstrap_count|n_startup_trials|n_warmup_steps|"
    r"interval_steps|n_min_trials|percentile|p_threshold|n_startup_steps)\b"
    r"|\boptuna(\.\w+)*\._\w+"
)


def test_no_module_but_optuna_private_reaches_optunas_private_members():
    offenders = []
    for folder in ("search", "objectives", "merge_core", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "optuna_private.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if PRIVATE.search(code):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "use search.study.optuna_private instead:\n" + "\n".join(offenders)


def test_the_pattern_finds_what_it_looks_for():
    for line in (
        "s = study._storage",
        "t._trial_id",
        "pruner._min_resource",
        "from optuna.storages._rdb import models",
        "optuna.pruners._successive_halving",
    ):
        assert PRIVATE.search(line), line
    for line in ("self._min_resource = 1", "study.trials", "trial.number", "optuna.pruners.MedianPruner"):
        assert not PRIVATE.search(line), line
