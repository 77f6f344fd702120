"""What the report draws from the study's stored data (the full page is tested in test_search_run.py)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState


def test_report_draws_intermediate_values_only_where_they_are_stored():
    import optuna.visualization as vis

    from search.report import _intermediate_values

    study = optuna.create_study(direction="maximize")
    t = study.ask()
    study.tell(t, 0.5)  # no pruner: nothing reported
    with pytest.raises(ValueError, match="prunes nothing"):
        _intermediate_values(study, vis)
    t = study.ask()
    t.report(0.25, 1)
    study.tell(t, state=TrialState.PRUNED)
    fig = _intermediate_values(study, vis)
    assert [list(tr.y) for tr in fig.data] == [[0.25]]
