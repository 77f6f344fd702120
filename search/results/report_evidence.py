"""The report's sections that the field reads (search.results.report puts them above Optuna's stock plots).

* the study's answer in plain lines (search.results.evidence_text.headline) and the two rankings side by side;
* the top recipes as readable rows: method, weights, density, components, schedule, scores with intervals;
* the per-layer LLM weight of the top recipes: ``w · r(i)`` against layer ``i`` (merge_core.schedule);
* the perception/reasoning trade-off: the first two datasets' proxy accuracies of every trial, pruned ones
  at the items they reached, baselines marked;
* the gain with its paired 95% interval per dataset over each baseline of every top trial (the promoted
  ones, else the proxy's top), on the proxy and on the held-out items;
* proxy against held-out score of every promoted trial, with intervals and Spearman's rho.

Each maker returns a plotly figure or a string saying why it is not drawn.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from search.results.evidence import StudyEvidence
from search.results.evidence_text import WHERE, fmt_gain, fmt_scores, headline, html_table, label

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

TOP = 5


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _rho_p(p: float, n: int) -> str:
    """Spearman's p-value where it means something (scipy's t approximation needs about 10 pairs)."""
    return f" (p = {p:.2g})" if n >= 10 else f" (n = {n}: too few pairs for a p-value)"


def recipe_text(recipe: dict[str, Any]) -> str:
    """One line: ``"ties a_VLM = 1.2, a_LLM = 0.6 · density 0.5 · attention + mlp + norm · step (start 2)"``."""
    c = recipe_cells(recipe)
    parts = [f"{c['method']} {c['weights']}"]
    if c["density"]:
        parts.append(f"density {c['density']}")
    return " · ".join([*parts, c["components"], c["schedule"]])


def recipe_cells(recipe: dict[str, Any]) -> dict[str, str]:
    """A recipe as the field writes it: method, weights, density, components, schedule."""
    from merge_core import Recipe
    from merge_core.errors import MergesearchError

    try:  # the recipe with its defaults filled in (a baseline stores only the fields it sets)
        recipe = Recipe.from_dict(recipe).to_dict()
    except MergesearchError:  # shown as stored when it does not validate (e.g. no model paths)
        pass
    from merge_core.methods.registry import registry

    m = recipe.get("method", "?")
    mdef = registry().get(str(m))
    if mdef is not None and not mdef.is_task_vector:  # the linear family weighs the LLM by one w
        weights = f"w_LLM = {_num(recipe.get('weight'))}"
    else:
        weights = f"a_VLM = {_num(recipe.get('vlm_weight'))}, a_LLM = {_num(recipe.get('llm_weight'))}"
        if recipe.get("lambda") not in (None, 1.0):
            weights += f", λ = {_num(recipe.get('lambda'))}"
    sched = dict(recipe.get("schedule") or {"shape": "constant"})
    shape = sched.pop("shape", "constant")
    extra = ", ".join(f"{k} {v}" for k, v in sched.items())
    comps = recipe.get("components") or []
    cw = recipe.get("component_weights") or {}
    from search.study.spec import own_searched

    own_fields = own_searched()
    own = [  # the method's own fields (della's epsilon, breadcrumbs' gamma, sce's select_topk)
        f"{pd.name} {_num(recipe[pd.name])}"
        for pd in (mdef.params if mdef else ())
        if pd.name in own_fields and recipe.get(pd.name) is not None
    ]
    return {
        "method": str(m) + (f" ({', '.join(own)})" if own else ""),
        "weights": weights,
        "density": "" if recipe.get("density") is None else _num(recipe.get("density")),
        "components": " + ".join(comps) + (f" ({cw})" if cw else ""),
        "schedule": shape + (f" ({extra})" if extra else ""),
    }


def recipes_table(ev: StudyEvidence, trials: list[FrozenTrial]) -> str:
    """HTML rows of the top recipes with their proxy and held-out scores (95% intervals)."""
    from search.results.evidence import VLM_ALONE

    vlm = ev.baselines.get(VLM_ALONE)
    head = ["trial", "method", "weights", "density", "components", "schedule", "proxy", "held-out"]
    head += ["gain vs vlm_alone (proxy)"]
    rows = []
    for t in trials:
        c = recipe_cells(t.user_attrs.get("recipe") or {})
        cells = [label(t), c["method"], c["weights"], c["density"], c["components"], c["schedule"]]
        cells += [fmt_scores(ev, t, "proxy"), fmt_scores(ev, t, "held_out") or "not promoted"]
        cells += [fmt_gain(ev, t, vlm, "proxy") if vlm is not None else ""]
        rows.append(cells)
    return (
        html_table("trials recipes", head, rows) + "<p class='small'>intervals: 95% (Wilson per dataset; bootstrap over items for "
        "the weighted value; paired bootstrap for gains, * = beat at 95%, p = exact McNemar)</p>"
    )


def answer_html(ev: StudyEvidence) -> str:
    """The headline lines and, once promoted, the rankings side by side (rich table as text)."""
    import io

    from rich.console import Console

    from search.results.evidence_text import rankings_table

    lines = "".join(f"<li>{html.escape(x)}</li>" for x in headline(ev))
    out = f"<ul class='answer'>{lines}</ul>"
    if ev.promoted():
        con = Console(width=140, record=True, file=io.StringIO())
        con.print(rankings_table(ev))
        out += f"<pre class='rank'>{html.escape(con.export_text())}</pre>"
    return out


def per_layer_figure(ev: StudyEvidence, trials: list[FrozenTrial]) -> Any:
    """LLM weight ``w · r(i)`` against layer ``i`` for the top recipes (w: weight or llm_weight)."""
    import plotly.graph_objects as go

    from merge_core import Recipe
    from merge_core.schedule import layer_factors
    from search.results.export import ExportError, num_layers

    fig = go.Figure()
    for t in trials:
        r = Recipe.from_dict(t.user_attrs["recipe"])
        try:
            n = num_layers(r.vlm)
        except ExportError as err:
            return f"not drawn: {err}"
        w = float(r.weight if not r.is_task_vector else (r.llm_weight or 0.0) * (r.lambda_ or 1.0))
        ys = [w * f for f in layer_factors(r.schedule, n)]
        fig.add_trace(
            go.Scatter(x=list(range(n)), y=ys, mode="lines+markers", name=f"trial {label(t)} {r.method}")
        )
    if not fig.data:
        return "not drawn: no COMPLETE trial with a recipe"
    fig.update_layout(
        xaxis_title="layer",
        yaxis_title="LLM weight (w · r(layer))",
        title="per-layer LLM weight, top recipes",
    )
    fig.update_xaxes(dtick=1)
    return fig


def tradeoff_figure(ev: StudyEvidence) -> Any:
    """First dataset against second, every trial with scores (pruned at the items reached), baselines marked."""
    import plotly.graph_objects as go

    trials = [t for t in ev.study.get_trials(deepcopy=False) if t.user_attrs.get("scores")]
    names: list[str] = []
    for t in trials:
        for d in t.user_attrs["scores"]:
            if d not in names:
                names.append(d)
    if len(names) < 2:
        return f"not drawn: needs two datasets, the study scores {names or 'none'}"
    x, y = names[0], names[1]
    fig = go.Figure()
    groups = {"COMPLETE": [], "PRUNED": [], "baseline": []}
    for t in trials:
        key = "baseline" if t.user_attrs.get("baseline") else t.state.name
        if key in groups and x in t.user_attrs["scores"] and y in t.user_attrs["scores"]:
            groups[key].append(t)
    style = {
        "COMPLETE": dict(symbol="circle", size=9, color="#1f77b4"),
        "PRUNED": dict(symbol="circle-open", size=7, color="#999"),
        "baseline": dict(symbol="star", size=15, color="#d62728"),
    }
    for key, ts in groups.items():
        if not ts:
            continue
        fig.add_trace(
            go.Scatter(
                x=[t.user_attrs["scores"][x] for t in ts],
                y=[t.user_attrs["scores"][y] for t in ts],
                mode="markers+text" if key == "baseline" else "markers",
                text=[t.user_attrs.get("baseline", "") for t in ts] if key == "baseline" else None,
                textposition="top left",
                hovertext=[f"trial {t.number}: {t.user_attrs.get('n_items', '?')} items" for t in ts],
                marker=style[key],
                name={
                    "PRUNED": "pruned (at the items reached)",
                    "COMPLETE": "complete",
                    "baseline": "baselines",
                }[key],
            )
        )
    fig.update_layout(xaxis_title=f"{x} (proxy accuracy)", yaxis_title=f"{y} (proxy accuracy)")
    return fig


def gain_trials(ev: StudyEvidence) -> list[FrozenTrial]:
    """The trials the gains plot compares with the baselines: the promoted searched trials, else the
    proxy's top :data:`TOP` (baselines left out: they are what is compared against)."""
    from search.study.trials import ranked_trials

    base = {b.number for b in ev.baselines.values()}
    promoted = [t for t in ev.promoted() if t.number not in base]
    return promoted or [t for t in ranked_trials(ev.study) if t.number not in base][:TOP]


def gains_figure(ev: StudyEvidence) -> Any:
    """Paired gain with its 95% interval per dataset (and weighted) of every :func:`gain_trials` trial over
    each baseline (one panel per baseline), on the proxy (circles) and the held-out items (diamonds)."""
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    trials = gain_trials(ev)
    if not trials:
        return "not drawn: no COMPLETE searched trial"
    bases = list(ev.baselines.items())
    if not bases:
        return "not drawn: the study has no baseline trial"
    fig = make_subplots(
        rows=1, cols=len(bases), subplot_titles=[f"vs {n}" for n, _ in bases], shared_yaxes=True
    )
    palette = plotly.colors.qualitative.Plotly
    shown: set[tuple[int, str]] = set()
    for col, (_, base) in enumerate(bases, start=1):
        for k, t in enumerate(trials):
            for scope in ("proxy", "held_out"):
                per, w = ev.gains(t, base, scope)
                if w is None:
                    continue
                items = list(per.items()) + [(f"weighted ({WHERE[scope]})", w)]
                key = (t.number, scope)
                fig.add_trace(
                    go.Scatter(
                        x=[d for d, _ in items],
                        y=[100 * g.gain.value for _, g in items],
                        error_y=dict(
                            type="data",
                            symmetric=False,
                            array=[100 * (g.gain.high - g.gain.value) for _, g in items],
                            arrayminus=[100 * (g.gain.value - g.gain.low) for _, g in items],
                        ),
                        mode="markers",
                        marker=dict(
                            size=9,
                            color=palette[k % len(palette)],
                            symbol="circle" if scope == "proxy" else "diamond",
                        ),
                        name=f"trial {label(t)} ({WHERE[scope]})",
                        legendgroup=f"{t.number}-{scope}",
                        showlegend=key not in shown,
                    ),
                    row=1,
                    col=col,
                )
                shown.add(key)
    if not fig.data:
        return "not drawn: no per-item records to pair the top trials with a baseline"
    promoted = trials[0].number in {p.number for p in ev.promoted()}
    fig.add_hline(y=0, line_dash="dot")
    fig.update_yaxes(title_text="gain in points (paired bootstrap 95% interval)", row=1, col=1)
    fig.update_layout(
        title=f"{len(trials)} {'promoted' if promoted else 'top (proxy)'} trials against each baseline",
        scattermode="group",
    )
    return fig


def fidelity_figure(ev: StudyEvidence) -> Any:
    """Proxy against held-out value of every promoted trial, with intervals, and Spearman's rho."""
    import plotly.graph_objects as go

    from objectives.stats import spearman

    pts = []
    for t in ev.promoted():
        p, h = ev.scored(t, "proxy").weighted, ev.scored(t, "held_out").weighted
        if p is not None and h is not None:
            pts.append((t, p, h))
    if not pts:
        return (
            "not drawn: no promoted trial with per-item full-set records (promote with the builtin backend)"
        )
    rho = spearman([p.value for _, p, _ in pts], [h.value for _, _, h in pts])
    fig = go.Figure(
        go.Scatter(
            x=[p.value for _, p, _ in pts],
            y=[h.value for _, _, h in pts],
            mode="markers+text",
            text=[label(t) for t, _, _ in pts],
            textposition="top center",
            error_x=dict(
                type="data",
                symmetric=False,
                array=[p.high - p.value for _, p, _ in pts],
                arrayminus=[p.value - p.low for _, p, _ in pts],
            ),
            error_y=dict(
                type="data",
                symmetric=False,
                array=[h.high - h.value for _, _, h in pts],
                arrayminus=[h.value - h.low for _, _, h in pts],
            ),
            name="promoted trials",
        )
    )
    rho_txt = (
        f"Spearman ρ = {rho[0]:.2f}{_rho_p(rho[1], len(pts))}" if rho else "Spearman ρ: needs 3 distinct points"
    )
    fig.update_layout(
        xaxis_title="proxy (weighted, 95% interval)",
        yaxis_title="held-out items (weighted, 95% interval)",
        title=f"proxy fidelity over {len(pts)} promoted trials: {rho_txt}",
    )
    return fig
