"""``report.html``: one self-contained page about a study (works offline).

First the study's answer (the best on the held-out items once promoted, with 95% intervals and paired
gains over the baselines, or "no recipe beat the VLM alone at 95%"), the top recipes as readable rows, and
the field's plots (search.results.report_evidence): the perception/reasoning trade-off of every trial, the gain
per dataset of every top trial over each baseline, the per-layer LLM weight, proxy vs held-out. Then the
stock plots from ``optuna.visualization`` (plotly): optimization history, parameter importances, the
Pareto front (several objectives), parallel coordinates, slices, and intermediate values (pruning).
plotly.js is embedded once, inline, from the installed plotly package. A plot that cannot be drawn
for this study (e.g. importances from fewer than 10 complete trials) is replaced by a note saying why.
Below the plots: a table of every trial (state, values, per-dataset proxy scores with 95% intervals, recipe,
times, worker, failure).
"""

from __future__ import annotations

import html
import json
import time
import warnings
from typing import TYPE_CHECKING, Any

from merge_core.atomic import write_text_atomic
from search.results.evidence import StudyEvidence
from search.results.evidence_text import fmt_scores, html_table
from search.study.known_points import report_html  # baselines the sampler learns from; warm starts
from search.study.trials import complete_trials, counts_by_state, ranked_trials, trial_attr

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from search.study.spec import StudySpec


MIN_TRIALS_FOR_IMPORTANCE = (
    10  # fewer complete trials: importances are noise (4 params x 3 points gave 0.25 each)
)


def _plots(study: optuna.Study, ev: StudyEvidence) -> list[tuple[str, Any]]:
    """(title, figure or error text) for each plot of the study: the field's views, then Optuna's."""
    import optuna.visualization as vis

    from search.results import report_evidence as rv

    multi = len(study.directions) > 1
    target = (lambda t: sum(t.values) / len(t.values)) if multi else None
    tname = "mean of objectives" if multi else "Objective Value"
    kw: dict[str, Any] = {"target": target, "target_name": tname} if multi else {}
    top = ranked_trials(study)[: rv.TOP]
    n_complete = len(complete_trials(study))
    makers: list[tuple[str, Any]] = [
        (
            "Perception vs reasoning: every trial (pruned at the items reached), baselines marked",
            lambda: rv.tradeoff_figure(ev),
        ),
        (
            "Gain of the top recipes over each baseline, per dataset (paired 95% interval)",
            lambda: rv.gains_figure(ev),
        ),
        ("Per-layer LLM weight of the top recipes", lambda: rv.per_layer_figure(ev, top)),
        ("Proxy vs held-out score of the promoted trials", lambda: rv.fidelity_figure(ev)),
        ("Optimization history", lambda: vis.plot_optimization_history(study, **kw)),
    ]
    if multi:
        names = [
            str(n) for n in (study.metric_names or [f"objective {i}" for i in range(len(study.directions))])
        ]
        makers.append(("Pareto front", lambda: vis.plot_pareto_front(study, target_names=names)))
    makers += [
        (
            "Parameter importances",
            lambda: (
                vis.plot_param_importances(study, **kw)
                if n_complete >= MIN_TRIALS_FOR_IMPORTANCE
                else f"not drawn: {n_complete} complete trials; importances from fewer than "
                f"{MIN_TRIALS_FOR_IMPORTANCE} are noise (see the slices and the trade-off plot instead)"
            ),
        ),
        ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study, **kw)),
        ("Slices", lambda: vis.plot_slice(study, **kw)),
    ]
    if not multi:
        makers.append(
            (
                "Intermediate values (running proxy accuracy at the steps the pruner reads)",
                lambda: _intermediate_values(study, vis),
            )
        )
    out: list[tuple[str, Any]] = []
    for title, make in makers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out.append((title, make()))
        except Exception as err:  # a plot that needs more trials / parameters than the study has
            out.append((title, f"not drawn: {type(err).__name__}: {err}"))
    return out


def _intermediate_values(study: optuna.Study, vis: Any) -> Any:
    """Optuna's plot, or why there is none: without a pruner the coordinator stores no intermediate values
    (search.study.pruners.reports_step), and Optuna would draw an empty frame."""
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        raise ValueError("no intermediate values: this study prunes nothing, so none are stored")
    return vis.plot_intermediate_values(study)


def _trial_rows(study: optuna.Study, ev: StudyEvidence) -> str:
    constrained = bool(ev.target_names("proxy"))
    rows = []
    for t in study.get_trials(deepcopy=False):
        vals = "" if t.values is None else ", ".join(f"{v:.4f}" for v in t.values)
        scores = trial_attr(study, t, "scores") or {}
        recipe = t.user_attrs.get("recipe") or {}
        short = {k: v for k, v in recipe.items() if k not in ("schema", "vlm", "llm", "base")}
        full_eval = trial_attr(study, t, "full_eval")
        cells = [
            str(t.number),
            t.state.name,
            vals,
            fmt_scores(ev, t, "proxy") or ", ".join(f"{k}: {v:.3f}" for k, v in scores.items()),
            t.user_attrs.get("baseline", ""),
            json.dumps(short, sort_keys=True),
            f"{t.user_attrs.get('merge_s', '')}",
            f"{t.user_attrs.get('eval_s', '')}",
            str(t.user_attrs.get("worker", "")),
            str(t.user_attrs.get("fail_reason", "")),
            json.dumps(full_eval.get("per_dataset", {})) if isinstance(full_eval, dict) else "",
        ]
        if constrained:  # judged on the proxy against the named baseline (search.study.constrained)
            f = ev.feasible(t, "proxy") if t.state.name in ("COMPLETE", "PRUNED") else None
            cells.append("-" if f is None else "feasible" if f else "INFEASIBLE")
        rows.append(cells)
    head = [
        "#",
        "state",
        "value(s)",
        "proxy scores [95% interval]",
        "baseline",
        "recipe",
        "merge s",
        "eval s",
        "worker",
        "fail reason",
        "full eval",
    ] + (["constraints"] if constrained else [])
    return html_table("trials", head, rows)


def render_report(study: optuna.Study, *, title: str | None = None, spec: StudySpec | None = None) -> str:
    """The report page as HTML text (plotly.js inline once; every plot in a ``div.plot`` section).
    ``spec``: the study file, for the per-item records (intervals, paired gains, held-out scores)."""
    from search.results import report_evidence as rv

    counts = counts_by_state(study)
    ev = StudyEvidence(study, spec)
    parts: list[str] = []
    first = True
    for i, (name, fig) in enumerate(_plots(study, ev)):
        if isinstance(fig, str):
            body = f"<p class='note'>{html.escape(fig)}</p>"
        else:
            body = fig.to_html(
                full_html=False, include_plotlyjs=first, div_id=f"plot-{i}", config={"responsive": True}
            )
            first = False
        parts.append(
            f"<section class='plot' data-title='{html.escape(name)}'><h2>{html.escape(name)}</h2>{body}</section>"
        )
    best_html = rv.recipes_table(ev, ranked_trials(study)[: rv.TOP])
    answer = rv.answer_html(ev)
    title = title or f"mergesearch study {study.study_name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} h2 {{ margin-top: 1.5em; }}
table.trials {{ border-collapse: collapse; font-size: 12px; }}
table.trials td, table.trials th {{ border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; }}
.note {{ color: #a60; }} .small {{ font-size: 11px; color: #555; }}
ul.answer li {{ margin: 2px 0; }} pre.rank {{ font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}. Trials: {", ".join(f"{k} {v}" for k, v in counts.items())}.
Directions: {", ".join(d.name.lower() for d in study.directions)}.</p>
<h2>Answer</h2>{answer}
{report_html(study)}
<h2>Best recipes (proxy ranking)</h2>{best_html}
{"".join(parts)}
<h2>All trials</h2>
{_trial_rows(study, ev)}
</body></html>
"""


def write_report(
    study: optuna.Study, out: Path, *, title: str | None = None, spec: StudySpec | None = None
) -> Path:
    """Write :func:`render_report` to ``out`` atomically."""
    return write_text_atomic(out, render_report(study, title=title, spec=spec))
