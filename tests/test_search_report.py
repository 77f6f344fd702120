"""What the report draws from the study's stored data (the full page is tested in test_search_run.py)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState


def test_report_draws_intermediate_values_only_where_they_are_stored():
    import optuna.visualization as vis

    from search.results.report import _intermediate_values

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


def test_recipe_cells_read_the_method_registry() -> None:
    """The report's recipe cells follow each method's declaration: the linear family shows its one LLM
    weight, a task-vector method its two weights, and a method's own fields appear beside its name."""
    from merge_core.methods.registry import registry
    from search.results.report_evidence import recipe_cells

    for name, mdef in registry().items():
        fields = {p.name: (p.default if p.default is not None else 0.25) for p in mdef.params}
        fields = {
            k: (0.25 if isinstance(v, bool) else v)
            for k, v in fields.items()
            if k not in ("normalize", "rescale")
        }
        cells = recipe_cells({"method": name, **fields})
        if mdef.is_task_vector:
            assert cells["weights"].startswith("a_VLM = "), name
        else:
            assert cells["weights"] == "w_LLM = 0.25", name
        own = [
            p.name
            for p in mdef.params
            if p.name
            not in ("weight", "vlm_weight", "llm_weight", "lambda", "density", "normalize", "rescale")
        ]
        assert all(f"{o} " in cells["method"] for o in own) and cells["method"].startswith(name), (
            name,
            cells,
        )
    assert recipe_cells({"method": "della", "vlm_weight": 1.0, "llm_weight": 0.5, "epsilon": 0.1})[
        "method"
    ] == ("della (epsilon 0.1)")


def test_html_table_escapes_every_cell_and_keeps_the_row_order() -> None:
    from search.results.evidence_text import html_table

    page = html_table("trials", ["#", "a<b"], [["1", "<script>"], ["2", "x & y"]])
    assert page.startswith("<table class='trials'><thead><tr><th>#</th><th>a&lt;b</th></tr></thead><tbody>")
    assert "<tr><td>1</td><td>&lt;script&gt;</td></tr><tr><td>2</td><td>x &amp; y</td></tr>" in page
    assert "<script>" not in page
